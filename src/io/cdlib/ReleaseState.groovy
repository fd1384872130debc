package io.cdlib

import com.cloudbees.groovy.cps.NonCPS

/**
 * Which release a build may hold open, kept in CDLIB_RELEASE_OPEN for post blocks:
 * post { failure { cdlibRollback(afterFailure: true) } } rolls back only when it is 'true'.
 */
class ReleaseState implements Serializable {

    private static final long serialVersionUID = 1L
    private static final String OPEN = 'true'
    private static final String CLOSED = 'false'

    /**
     * What the verb does to a release: 'opens' (deploy, release, scale, whose journaled steps are a
     * release of their own, and rollback, which may open a release to return to an earlier one),
     * 'inside' (works on the open release: switch, cleanup, the pre- and post-integration tests) or
     * 'none' (status, color, history, heal, build, push, the pre-deployment tests).
     */
    @NonCPS
    static String role(String verb, Map values) {
        if (StepOptions.isTrue(values.dryRun)) {
            return 'none'  // a dry run changes nothing: no release is opened, touched or closed
        }
        if (verb in ['deploy', 'release', 'scale', 'rollback']) {
            return 'opens'
        }
        if (verb in ['switch', 'cleanup'] || (verb == 'test' && String.valueOf(values.type) != 'pre-deployment')) {
            return 'inside'
        }
        return 'none'
    }

    /** Whether the verb's exit code 1 means "failed, and the release was rolled back". */
    @NonCPS
    static boolean undoesOnFailure(String verb, Map values) {
        if (verb == 'test') {
            return role(verb, values) == 'inside' && !StepOptions.isTrue(values.noRollback)
        }
        return verb in ['deploy', 'switch', 'release', 'scale', 'rollback']
    }

    /** The value while the CLI runs (and if the step is aborted, e.g. by a timeout). */
    @NonCPS
    static String whileRunning(Map cmd, Object current) {
        return cmd.role == 'opens' ? OPEN : (current ? String.valueOf(current) : CLOSED)
    }

    /**
     * 'true' while this build may have a release open that nothing has closed or undone yet; `current`
     * is the value from before the step. Only an exit code that proves it closes the release: 0 of
     * cleanup, rollback, release or scale, and 1 of a verb that rolls its release back on failure. Exit 2, 3
     * and 4 leave it as it was (nothing changed; another release's lock; the release stays open for a
     * person). Everything else (5: state unknown, 137: killed, 143: terminated, any code cdlib does not
     * use) means a release this step works on may still be open.
     */
    @NonCPS
    static String after(Map cmd, int code, Object current) {
        String was = current == null ? CLOSED : String.valueOf(current)
        if (cmd.role == 'none') {
            return was  // status, color, history, build, push, pre-deployment tests: no release involved
        }
        if (code == 0) {
            if (cmd.verb == 'deploy') {
                return OPEN
            }
            return cmd.verb in ['cleanup', 'rollback', 'release', 'scale'] ? CLOSED : was
        }
        if (code == 1) {
            return cmd.undoes ? CLOSED : was  // exit 1 of such a verb means: rolled back
        }
        return code in [2, 3, 4] ? was : OPEN
    }

    /**
     * cdlibRollback(afterFailure: true): whether to roll back, from the values cdlibRun kept
     * (CDLIB_RELEASE_OPEN, CDLIB_LAST_EXIT_CODE): [run: true|false, message: what to echo], or
     * [problem: 'one line'] when the other parameters ask for a specific release.
     */
    @NonCPS
    static Map afterFailure(Map params, Object open, Object lastExitCode) {
        if (params.containsKey('to') || params.containsKey('previous')) {
            return [problem: 'cdlibRollback: afterFailure undoes the release this build left open; ' +
                    'it takes no to or previous']
        }
        if (String.valueOf(open) != OPEN) {
            return [run: false, message: 'cdlib rollback: skipped, this build left no open release ' +
                    '(nothing was deployed, or it was already undone)']
        }
        if (String.valueOf(lastExitCode) == '4') {
            return [run: false, message: 'cdlib rollback: skipped after exit code 4: the undo is incomplete, ' +
                    'a person is needed (cdlib status)']
        }
        String last = lastExitCode ? String.valueOf(lastExitCode) : 'none (the step was aborted)'
        return [run: true, message: ("cdlib rollback: the last cdlib step ended with exit code ${last}; " +
                "this build's release may still be open, rolling it back " +
                '(a rollback without an open release changes nothing)').toString()]
    }

}
