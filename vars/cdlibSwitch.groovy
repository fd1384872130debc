// Points the proxy at the new color, verifies it through the proxy, stores the new live color (cdlib switch).
// Parameters and behaviour: vars/cdlibSwitch.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    return cdlibRun('switch', params, ['dryRun'])
}
