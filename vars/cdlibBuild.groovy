// Builds the service image and its test images, tagged (cdlib build [--only service|tests]).
// Parameters and behaviour: vars/cdlibBuild.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    return cdlibRun('build', params, ['tag', 'only'])
}
