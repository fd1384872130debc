// Runs N instances of the live color (cdlib scale N), or more / fewer with '+N' / '-N'. The count
// is stored and inherited by the next release whose descriptor sets no replicas. A failure is rolled
// back (exit 1); a scale killed half way is undone by cdlibRollback().
// Parameters and behaviour: vars/cdlibScale.txt. The command line is built by cdlibRun.
def call(Map params = [:]) {
    if (params?.replicas == null) {
        error("cdlibScale: replicas is required: a count N (1 to 100), or '+N' / '-N'")
    }
    return cdlibRun('scale', params, ['replicas', 'lockWait', 'lockTtl'])
}
