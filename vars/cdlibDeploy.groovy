// Opens a release: starts the next color beside the live one, waits until healthy, registers it (cdlib deploy).
// Parameters and behaviour: vars/cdlibDeploy.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    return cdlibRun('deploy', params, ['tag', 'image', 'lockWait', 'lockTtl', 'dryRun'])
}
