package io.cdlib

import com.cloudbees.groovy.cps.NonCPS

/**
 * What an exit code and the JSON result of the CLI mean for the build: [kind: 'ok' | 'unstable' |
 * 'error', message: ...]. 0 ok, 1 failed and rolled back, 2 bad input, 3 lock held, 4 undo
 * incomplete, 5 failed and the state is unknown; 137 (killed), 143 (terminated) and any other code
 * are unknown too; a failed suite the descriptor marks unstable makes the build UNSTABLE instead.
 */
class Verdict implements Serializable {

    private static final long serialVersionUID = 1L
    private static final String ERROR = 'error'

    @NonCPS
    static Map of(Map cmd, int code, Map result) {
        String title = cmd.title
        String service = result.service ? String.valueOf(result.service) : 'the service'
        String message = result.message ? String.valueOf(result.message) : 'no result file; see the log above'
        List suites = unstableSuites(result)
        if (suites && (code == 0 || (code == 1 && cmd.verb == 'test'))) {
            return [kind: 'unstable', message: "cdlib ${title}: ${suites.join(', ')} tests of ${service} failed; " +
                    "the descriptor marks them unstable, so the build is UNSTABLE: ${message}".toString()]
        }
        if (code == 0) {
            return [kind: 'ok', message: message]
        }
        return [kind: ERROR, message: failure(cmd, code, service, message, result)]
    }

    /** The one-line error for a non-zero exit code. */
    @NonCPS
    static String failure(Map cmd, int code, String service, String message, Map result) {
        String title = cmd.title
        switch (code) {
            case 1:
                if (cmd.undoes) {
                    return "cdlib ${title} failed for ${service}; the release was rolled back: ${message}".toString()
                }
                return cmd.role == 'none'
                    ? "cdlib ${title} failed for ${service}: ${message}".toString()
                    : ("cdlib ${title} failed for ${service}; the release was not rolled back " +
                       "and is still open: ${message}").toString()
            case 2:
                return "cdlib ${title}: bad input, nothing was changed: ${message}".toString()
            case 3:
                return lockHeld(title, service, message, result)
            case 4:
                return ("cdlib ${title} failed for ${service} and the undo is incomplete: " +
                        "a person is needed (run 'cdlib status'): ${message}").toString()
            case 5:
                return ("cdlib ${title} failed for ${service} and the state is unknown" +
                        "${unknownHint(cmd)}: ${message}").toString()
            case 137:
                return ("cdlib ${title} was killed (exit 137: SIGKILL, e.g. a timeout or the " +
                        "out-of-memory killer)${unknownHint(cmd)}: ${message}").toString()
            case 143:
                return "cdlib ${title} was terminated (exit 143: SIGTERM)${unknownHint(cmd)}: ${message}".toString()
            default:
                return ("cdlib ${title} ended with exit code ${code} (not a cdlib exit code: " +
                        "is the CLI installed? set CDLIB_CLI)${unknownHint(cmd)}: ${message}").toString()
        }
    }

    /**
     * Exit 3, told apart by the result's error.type: LockHeld (another release holds the service's
     * lock: named from error.holder), ProxyBusy (another proxy change held the proxy lock too long) or
     * JournalConflict (another process drives the release); the CLI's own message otherwise.
     */
    @NonCPS
    static String lockHeld(String title, String service, String message, Map result) {
        Object h = holder(result)
        if (errorType(result) == 'LockHeld' && h instanceof Map) {
            return "another release of ${service} is running: ${holderText((Map) h)}".toString()
        }
        String who = h instanceof Map ? " (${holderText((Map) h)})".toString() : ''
        return "cdlib ${title}: ${message}${who}".toString()
    }

    /** The type of the error the CLI put in the result (error.type), or ''. */
    @NonCPS
    static String errorType(Map result) {
        return result.error instanceof Map && result.error.type ? String.valueOf(result.error.type) : ''
    }

    /** The holder record the CLI puts in the result's error (error.holder), or null. */
    @NonCPS
    static Object holder(Map result) {
        return result.error instanceof Map ? result.error.holder : null
    }

    /** Who holds the lock, from the holder record. */
    @NonCPS
    static String holderText(Map h) {
        List parts = ["held by ${h.who ?: '?'}".toString()]
        if (h.pid) {
            parts << "pid ${h.pid}".toString()
        }
        if (h.build) {
            parts << "build ${h.build}".toString()
        }
        if (h.build_url) {
            parts << String.valueOf(h.build_url)
        }
        if (h.release) {
            parts << "release ${h.release}".toString()
        }
        return parts.join(', ')
    }

    /** The failed suites of a result when every one of them is allowed to mark the build UNSTABLE. */
    @NonCPS
    static List unstableSuites(Map result) {
        List failed = []
        boolean allUnstable = true
        Object tests = result.tests
        if (tests instanceof List) {
            for (Object t in tests) {
                if (t instanceof Map && t.passed == false && t.skipped != true) {
                    failed << String.valueOf(t.suite)
                    allUnstable = allUnstable && t.unstable_ok == true
                }
            }
        }
        return (failed && allUnstable) ? failed : []
    }

    /** What to do when the outcome is unknown, for a verb that works on a release (else ''). */
    @NonCPS
    static String unknownHint(Map cmd) {
        if (cmd.role == 'none') {
            return ''
        }
        return "; the release may still be open: run 'cdlib status', then 'cdlib rollback' " +
            '(post { failure { cdlibRollback(afterFailure: true) } } does)'
    }

}
