// Pushes the service image and its test images to their registry (cdlib push [--only service|tests]).
// Parameters and behaviour: vars/cdlibPush.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    return cdlibRun('push', params, ['tag', 'only'])
}
