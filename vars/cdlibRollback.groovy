import io.cdlib.ReleaseState

// Undoes the open release from its journal (cdlib rollback); with no open release it changes nothing
// and succeeds. previous: true (--previous) or to: 'RELEASE_ID' (--to) returns to an earlier release.
// Parameters and behaviour: vars/cdlibRollback.txt. The command line is built by cdlibRun.
//
// afterFailure: true is for post { failure { ... } }: it rolls back only a release this build may have
// left open (env.CDLIB_RELEASE_OPEN, kept by cdlibRun: 'true' also after an exit code 5, a killed or
// terminated CLI, or any code cdlib does not use, because the release may still be open), and never
// after an exit code 4 (the undo is incomplete: a person is needed). A deploy or release that exits 3
// (another build's release holds the lock) never marks a release open, so the guard keeps a failed
// build from undoing another build's release; an exit 3 of a later stage (the proxy stayed busy)
// leaves this build's release open, and it is rolled back (the CLI itself refuses, exit 3, while a
// live process still drives the release).
Map call(Map params = [:]) {
    Map p = new LinkedHashMap(params ?: [:])
    if (p.remove('afterFailure')) {
        Map guard = ReleaseState.afterFailure(p, env.CDLIB_RELEASE_OPEN, env.CDLIB_LAST_EXIT_CODE)
        if (guard.problem) {
            error(guard.problem)
        }
        echo(guard.message)
        if (!guard.run) {
            return [:]
        }
    }
    return cdlibRun('rollback', p, ['to', 'previous', 'lockWait', 'lockTtl', 'dryRun'])
}
