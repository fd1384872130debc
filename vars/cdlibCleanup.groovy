// Stops and de-registers the old color and closes the release (cdlib cleanup).
// Parameters and behaviour: vars/cdlibCleanup.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    return cdlibRun('cleanup', params, ['dryRun'])
}
