// Live color, instances and their health, the open release and the lock holder (cdlib status).
// Parameters and behaviour: vars/cdlibStatus.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    return cdlibRun('status', params, [])
}
