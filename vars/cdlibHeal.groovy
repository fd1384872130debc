// Brings the live color back to its replica count (cdlib heal): dead instances are started again
// under their names on their pinned ports, registrations and the proxy are repaired. An open release
// is left alone. watch: true keeps healing every interval seconds (maxRounds / maxSeconds end it).
// Parameters and behaviour: vars/cdlibHeal.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    return cdlibRun('heal', params, ['watch', 'interval', 'maxRounds', 'maxSeconds'])
}
