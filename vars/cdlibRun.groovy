import io.cdlib.CommandPlan
import io.cdlib.Credentials
import io.cdlib.ReleaseState
import io.cdlib.Verdict

/*
 * The one place where a cdlib step becomes a command line: every other step in vars/ is a one-line
 * call to this one.
 *
 *   cdlibRun('deploy', [tag: 'abc123', lockWait: 300], ['tag', 'image', 'lockWait', 'lockTtl'])
 *
 * 1. checks the named parameters against the ones the verb takes, and the value of a parameter that
 *    has a fixed set of choices (a typo fails the build at once);
 * 2. turns them into an argument list, in a fixed order, every argument single-quoted by quote();
 * 3. binds the credentials with withCredentials, so secrets reach the CLI only through its
 *    environment and never appear in the script text (no Groovy interpolation of a secret);
 * 4. runs the CLI with sh(returnStatus: true) and reads the JSON result file it wrote;
 * 5. publishes JUnit reports for the test verbs;
 * 6. maps the exit code: 0 ok, 1 failed and rolled back, 2 bad input, 3 lock held, 4 undo
 *    incomplete, 5 failed and the state is unknown; 137 (killed), 143 (terminated) and any other code
 *    are unknown too; a failed suite the descriptor marks unstable makes the build UNSTABLE instead.
 *
 * The CLI is `python3 -m cdlib` unless the environment variable CDLIB_CLI names another command
 * (e.g. /opt/cdlib/venv/bin/cdlib). It is expanded by the shell, not by Groovy.
 *
 * Two environment variables carry what a post block needs to decide about a rollback:
 * CDLIB_LAST_EXIT_CODE (the last CLI exit code, empty while a step runs or after it was killed) and
 * CDLIB_RELEASE_OPEN ('true' whenever this build may have a release open: from the start of a deploy,
 * release or rollback until cleanup or a rollback closes it, or a step reports that it already rolled
 * back). Only a code that proves it turns it to 'false'; an unknown outcome (exit 5, a killed CLI, a
 * code cdlib does not use, a step aborted by a timeout) leaves it 'true', so that
 * post { failure { cdlibRollback(afterFailure: true) } } runs the rollback, which changes nothing
 * when no release is open.
 *
 * The work is done by classes of src/io/cdlib (pure, @NonCPS): CommandPlan (1, 2), Credentials (3),
 * ReleaseState (CDLIB_RELEASE_OPEN) and Verdict (6). Pipeline steps are only called from here.
 */

Map call(String verb, Map params = [:], List keys = []) {
    Map cmd = CommandPlan.of(verb, params ?: [:], keys ?: [])
    if (cmd.problem) {
        error(cmd.problem)
    }
    env.CDLIB_LAST_EXIT_CODE = ''
    String before = env.CDLIB_RELEASE_OPEN
    env.CDLIB_RELEASE_OPEN = ReleaseState.whileRunning(cmd, before)
    int code
    if (cmd.bindings) {
        withCredentials(Credentials.bindings(this, cmd.bindings)) {
            code = sh(script: cmd.script, returnStatus: true, label: "cdlib ${cmd.title}")
        }
    } else {
        code = sh(script: cmd.script, returnStatus: true, label: "cdlib ${cmd.title}")
    }
    env.CDLIB_LAST_EXIT_CODE = String.valueOf(code)
    env.CDLIB_RELEASE_OPEN = ReleaseState.after(cmd, code, before)
    Map result = fileExists(cmd.resultFile) ? readJSON(file: cmd.resultFile, returnPojo: true) : [:]
    if (cmd.junit) {
        junit(allowEmptyResults: true, testResults: cmd.junit)
    }
    Map outcome = Verdict.of(cmd, code, result ?: [:])
    if (outcome.kind == 'error') {
        error(outcome.message)
    }
    if (outcome.kind == 'unstable') {
        unstable(outcome.message)
    }
    return result
}
