// Runs the pre-deployment, pre-integration or post-integration suite and publishes its JUnit report (cdlib test TYPE).
// Parameters and behaviour: vars/cdlibTest.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    return cdlibRun('test', params, ['type', 'tag', 'targetUrl', 'junit', 'noRollback'])
}
