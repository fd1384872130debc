// Deploy, pre-integration tests, switch, post-integration tests and cleanup in one process (cdlib release).
// Parameters and behaviour: vars/cdlibRelease.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    return cdlibRun('release', params, ['tag', 'image', 'lockWait', 'lockTtl', 'junitDir', 'dryRun'])
}
