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
def call(Map params = [:]) {
    Map p = new LinkedHashMap(params ?: [:])
    Object afterFailure = p.remove('afterFailure')
    if (afterFailure) {
        if (p.containsKey('to') || p.containsKey('previous')) {
            error('cdlibRollback: afterFailure undoes the release this build left open; it takes no to or previous')
        }
        if (env.CDLIB_RELEASE_OPEN != 'true') {
            echo 'cdlib rollback: skipped, this build left no open release ' +
                 '(nothing was deployed, or it was already undone)'
            return [:]
        }
        if (env.CDLIB_LAST_EXIT_CODE == '4') {
            echo 'cdlib rollback: skipped after exit code 4: the undo is incomplete, a person is needed (cdlib status)'
            return [:]
        }
        String last = env.CDLIB_LAST_EXIT_CODE ?: 'none (the step was aborted)'
        echo "cdlib rollback: the last cdlib step ended with exit code ${last}; this build's release may still " +
             'be open, rolling it back (a rollback without an open release changes nothing)'
    }
    return cdlibRun('rollback', p, ['to', 'previous', 'lockWait', 'lockTtl', 'dryRun'])
}
