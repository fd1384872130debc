// Undoes the open release from its journal; without one, returns to the previous release (cdlib rollback).
// Parameters and behaviour: vars/cdlibRollback.txt. The command line is built by cdlibRun.
//
// afterFailure: true is for post { failure { ... } }: it rolls back only a release this build opened
// and that is still open (env.CDLIB_RELEASE_OPEN, kept by cdlibRun), and never after an exit code 3
// (another release holds the lock) or 4 (the undo is incomplete: a person is needed). Without that
// guard a rollback after a failed build step would return the service to the release before the
// live one, because rollback without an open release means "go back one release".
def call(Map params = [:]) {
    Map p = new LinkedHashMap(params ?: [:])
    Object afterFailure = p.remove('afterFailure')
    if (afterFailure) {
        if (env.CDLIB_RELEASE_OPEN != 'true') {
            echo 'cdlib rollback: skipped, this build left no open release (nothing was deployed, or it was already undone)'
            return [:]
        }
        if (env.CDLIB_LAST_EXIT_CODE in ['3', '4']) {
            echo "cdlib rollback: skipped after exit code ${env.CDLIB_LAST_EXIT_CODE}: " +
                 (env.CDLIB_LAST_EXIT_CODE == '3' ? 'another release holds the lock'
                                                  : 'the undo is incomplete, a person is needed (cdlib status)')
            return [:]
        }
    }
    return cdlibRun('rollback', p, ['to', 'lockWait', 'lockTtl'])
}
