// Past releases of the service, newest first (cdlib history).
// Parameters and behaviour: vars/cdlibHistory.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    return cdlibRun('history', params, ['limit'])
}
