// The live color, or with next: true the color the next release goes to (cdlib color).
// Parameters and behaviour: vars/cdlibColor.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    return cdlibRun('color', params, ['next'])
}
