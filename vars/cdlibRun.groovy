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
 * Pure string work lives in @NonCPS methods; steps are only called from call().
 */

def call(String verb, Map params = [:], List keys = []) {
    Map cmd = plan(verb, params ?: [:], keys ?: [])
    if (cmd.problem) {
        error(cmd.problem)
    }
    env.CDLIB_LAST_EXIT_CODE = ''
    String before = env.CDLIB_RELEASE_OPEN
    // while the CLI runs (and if the step is aborted, e.g. by a timeout) a release may be open
    env.CDLIB_RELEASE_OPEN = cmd.role == 'opens' ? 'true' : (before ?: 'false')
    int code
    if (cmd.bindings) {
        withCredentials(credentialBindings(cmd.bindings)) {
            code = sh(script: cmd.script, returnStatus: true, label: "cdlib ${cmd.title}")
        }
    } else {
        code = sh(script: cmd.script, returnStatus: true, label: "cdlib ${cmd.title}")
    }
    env.CDLIB_LAST_EXIT_CODE = String.valueOf(code)
    env.CDLIB_RELEASE_OPEN = releaseOpen(cmd, code, before)
    Map result = fileExists(cmd.resultFile) ? readJSON(file: cmd.resultFile, returnPojo: true) : [:]
    if (cmd.junit) {
        junit(allowEmptyResults: true, testResults: cmd.junit)
    }
    Map outcome = verdict(cmd, code, result ?: [:])
    if (outcome.kind == 'error') {
        error(outcome.message)
    }
    if (outcome.kind == 'unstable') {
        unstable(outcome.message)
    }
    return result
}

/** The withCredentials bindings for the checked credential entries (these are pipeline steps). */
def credentialBindings(List entries) {
    List out = []
    for (Map c in entries) {
        if (c.usernameVariable) {
            out << usernamePassword(credentialsId: c.id, usernameVariable: c.usernameVariable,
                                    passwordVariable: c.passwordVariable)
        } else if (c.type == 'file') {
            out << file(credentialsId: c.id, variable: c.variable)
        } else {
            out << string(credentialsId: c.id, variable: c.variable)
        }
    }
    return out
}

// ---- pure helpers -------------------------------------------------------------------------------

/**
 * Named parameters, in the order their options appear on the command line. `flag: null` is the
 * verb's positional argument; `bool: true` is an option without a value; `choices` are the only
 * values the option takes (checked here, so a wrong one fails before anything runs).
 */
@NonCPS
List options() {
    return [
        [key: 'type', flag: null],
        [key: 'file', flag: '--file'],
        [key: 'store', flag: '--store'],
        [key: 'tag', flag: '--tag'],
        [key: 'image', flag: '--image'],
        [key: 'only', flag: '--only', choices: ['service', 'tests']],
        [key: 'targetUrl', alias: 'target-url', flag: '--target-url'],
        [key: 'junit', flag: '--junit'],
        [key: 'junitDir', alias: 'junit-dir', flag: '--junit-dir'],
        [key: 'noRollback', alias: 'no-rollback', flag: '--no-rollback', bool: true],
        [key: 'lockWait', alias: 'lock-wait', flag: '--lock-wait'],
        [key: 'lockTtl', alias: 'lock-ttl', flag: '--lock-ttl'],
        [key: 'to', flag: '--to'],
        [key: 'previous', flag: '--previous', bool: true],
        [key: 'next', flag: '--next', bool: true],
        [key: 'limit', flag: '--limit'],
        [key: 'resultFile', alias: 'result-file', flag: '--result-file'],
    ]
}

/** Parameters every step takes besides its own. */
@NonCPS
List commonKeys() {
    return ['file', 'store', 'credentials', 'resultFile']
}

/** The shell text that starts the CLI; CDLIB_CLI is expanded (and split into words) by the shell. */
@NonCPS
String launcher() {
    return 'PYTHONUNBUFFERED=1 ${CDLIB_CLI:-python3 -m cdlib}'
}

/** A shell word that stands for exactly `value`: single quotes, an embedded ' written as '\''. */
@NonCPS
String quote(Object value) {
    return "'" + String.valueOf(value).replace("'", "'\\''") + "'"
}

@NonCPS
String stepName(String verb) {
    return 'cdlib' + verb.substring(0, 1).toUpperCase() + verb.substring(1)
}

@NonCPS
boolean isTrue(Object v) {
    return v == true || String.valueOf(v) == 'true'
}

/**
 * What the verb does to a release: 'opens' (deploy, release, and rollback, which may open a release
 * to return to an earlier one), 'inside' (works on the open release: switch, cleanup, the pre- and
 * post-integration tests) or 'none' (status, color, history, build, push, the pre-deployment tests).
 */
@NonCPS
String releaseRole(String verb, Map values) {
    if (verb in ['deploy', 'release', 'rollback']) {
        return 'opens'
    }
    if (verb in ['switch', 'cleanup'] || (verb == 'test' && String.valueOf(values.type) != 'pre-deployment')) {
        return 'inside'
    }
    return 'none'
}

/** Whether the verb's exit code 1 means "failed, and the release was rolled back". */
@NonCPS
boolean undoesOnFailure(String verb, Map values) {
    if (verb == 'test') {
        return releaseRole(verb, values) == 'inside' && !isTrue(values.noRollback)
    }
    return verb in ['deploy', 'switch', 'release', 'rollback']
}

/**
 * Everything call() needs, or `problem` (a one-line message) when the parameters are wrong:
 * argv, script, resultFile, junit (an Ant pattern to publish, or null), bindings (checked
 * credential entries), title (the verb as the user reads it, e.g. "test pre-integration"),
 * verb, role (releaseRole) and undoes (undoesOnFailure).
 */
@NonCPS
Map plan(String verb, Map params, List keys) {
    String step = stepName(verb)
    Map byName = [:]
    for (Map o in options()) {
        byName[o.key] = o
        if (o.alias) {
            byName[o.alias] = o
        }
    }
    List allowed = keys + commonKeys()
    Map values = [:]
    for (Object k in params.keySet()) {
        Map o = byName[String.valueOf(k)]
        String key = o ? o.key : String.valueOf(k)
        if (!allowed.contains(key)) {
            return [problem: "${step}: unknown parameter '${k}'; it takes: ${allowed.join(', ')}".toString()]
        }
        if (values.containsKey(key) && params[k] != null) {
            return [problem: "${step}: '${k}' is given twice (as ${key} and as its alias)".toString()]
        }
        if (params[k] != null) {
            values[key] = params[k]
        }
    }
    if (keys.contains('type') && !values.type) {
        return [problem: "${step}: type is required: pre-deployment, pre-integration or post-integration".toString()]
    }
    if (values.containsKey('tag') && values.containsKey('image')) {
        return [problem: "${step}: give tag or image, not both".toString()]
    }
    if (values.containsKey('to') && isTrue(values.previous)) {
        return [problem: "${step}: give to or previous, not both".toString()]
    }
    String wrong = badChoice(step, values)
    if (wrong) {
        return [problem: wrong]
    }
    String title = values.type ? "${verb} ${values.type}".toString() : verb
    // a step that covers part of the verb's work keeps its own result file (build of the test images
    // and build of the service image in one pipeline must not overwrite each other's result)
    String part = values.type ?: values.only
    String suffix = part ? "${verb}-${part}".toString() : verb
    if (!values.resultFile) {
        values.resultFile = "cdlib-result-${suffix}.json".toString()
    }
    List stale = [quote(values.resultFile)]
    String junit = null
    if (verb == 'test') {
        if (!values.junit) {
            values.junit = "cdlib-reports/${values.type}.xml".toString()
        }
        junit = String.valueOf(values.junit)
        stale << quote(junit)
    } else if (verb == 'release') {
        if (!values.junitDir) {
            values.junitDir = 'cdlib-reports'
        }
        junit = "${values.junitDir}/*.xml".toString()
        stale << quote(values.junitDir) + '/*.xml'
    }
    Map checked = credentials(step, values.credentials)
    if (checked.problem) {
        return checked
    }
    List argv = [verb]
    for (Map o in options()) {
        if (!values.containsKey(o.key)) {
            continue
        }
        Object v = values[o.key]
        if (o.flag == null) {
            argv << String.valueOf(v)
        } else if (o.bool) {
            if (isTrue(v)) {
                argv << o.flag
            }
        } else {
            argv << o.flag
            argv << String.valueOf(v)
        }
    }
    List words = []
    for (Object a in argv) {
        words << quote(a)
    }
    String script = "rm -f -- ${stale.join(' ')}\n${launcher()} ${words.join(' ')}".toString()
    return [argv: argv, script: script, resultFile: String.valueOf(values.resultFile), junit: junit,
            bindings: checked.bindings, title: title, verb: verb, role: releaseRole(verb, values),
            undoes: undoesOnFailure(verb, values)]
}

/** The problem with the first value outside its option's `choices`, or null. */
@NonCPS
String badChoice(String step, Map values) {
    for (Map o in options()) {
        if (o.choices && values.containsKey(o.key) && !(String.valueOf(values[o.key]) in o.choices)) {
            List shown = o.choices.collect { "'${it}'" }
            return "${step}: ${o.key} must be ${shown.join(' or ')}, got '${values[o.key]}'".toString()
        }
    }
    return null
}

/**
 * Checks `credentials: [[id: 'x', variable: 'V'], [id: 'y', usernameVariable: 'U', passwordVariable: 'P'],
 * [id: 'z', variable: 'F', type: 'file']]`; returns [bindings: [...]] or [problem: '...'].
 */
@NonCPS
Map credentials(String step, Object given) {
    if (given == null) {
        return [bindings: []]
    }
    String shape = "[id: 'ID', variable: 'NAME'] (type: 'string' or 'file') or " +
        "[id: 'ID', usernameVariable: 'USER', passwordVariable: 'PASSWORD']"
    if (!(given instanceof List)) {
        return [problem: "${step}: credentials: expected a list of ${shape}".toString()]
    }
    List out = []
    int i = 0
    for (Object c in given) {
        String where = "${step}: credentials[${i}]"
        i++
        if (!(c instanceof Map) || !(c.id instanceof CharSequence) || !c.id) {
            return [problem: "${where}: expected ${shape}".toString()]
        }
        List names = c.usernameVariable ? [c.usernameVariable, c.passwordVariable] : [c.variable]
        for (Object n in names) {
            if (!(n instanceof CharSequence) || !(String.valueOf(n) ==~ /[A-Za-z_][A-Za-z0-9_]*/)) {
                return [problem: "${where}: expected ${shape}; variable names are [A-Za-z_][A-Za-z0-9_]*".toString()]
            }
        }
        String type = c.type ? String.valueOf(c.type) : 'string'
        if (!(type in ['string', 'file']) || (c.usernameVariable && c.type)) {
            return [problem: "${where}: type must be 'string' or 'file' (username/password entries have none)".toString()]
        }
        Map entry = [id: String.valueOf(c.id)]
        if (c.usernameVariable) {
            entry.usernameVariable = String.valueOf(c.usernameVariable)
            entry.passwordVariable = String.valueOf(c.passwordVariable)
        } else {
            entry.variable = String.valueOf(c.variable)
            entry.type = type
        }
        out << entry
    }
    return [bindings: out]
}

/**
 * 'true' while this build may have a release open that nothing has closed or undone yet; `current`
 * is the value from before the step. Only an exit code that proves it closes the release: 0 of
 * cleanup, rollback or release, and 1 of a verb that rolls its release back on failure. Exit 2, 3
 * and 4 leave it as it was (nothing changed; another release's lock; the release stays open for a
 * person). Everything else (5: state unknown, 137: killed, 143: terminated, any code cdlib does not
 * use) means a release this step works on may still be open.
 */
@NonCPS
String releaseOpen(Map cmd, int code, Object current) {
    String was = current == null ? 'false' : String.valueOf(current)
    if (cmd.role == 'none') {
        return was  // status, color, history, build, push, pre-deployment tests: no release involved
    }
    if (code == 0) {
        if (cmd.verb == 'deploy') {
            return 'true'
        }
        return cmd.verb in ['cleanup', 'rollback', 'release'] ? 'false' : was
    }
    if (code == 1) {
        return cmd.undoes ? 'false' : was  // exit 1 of such a verb means: rolled back
    }
    if (code in [2, 3, 4]) {
        return was
    }
    return 'true'
}

/** The failed suites of a result when every one of them is allowed to mark the build UNSTABLE. */
@NonCPS
List unstableSuites(Map result) {
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

/** Who holds the lock: the holder record the CLI puts in the result's error, else its message. */
@NonCPS
String holderText(Map result) {
    Object h = result.error instanceof Map ? result.error.holder : null
    if (h instanceof Map) {
        List parts = ["held by ${h.who ?: '?'}".toString()]
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
    String message = result.message ? String.valueOf(result.message) : 'see the log above'
    int at = message.indexOf(' is running: ')
    return at >= 0 ? message.substring(at + ' is running: '.length()) : message
}

/** What to do when the outcome is unknown, for a verb that works on a release (else ''). */
@NonCPS
String unknownHint(Map cmd) {
    if (cmd.role == 'none') {
        return ''
    }
    return "; the release may still be open: run 'cdlib status', then 'cdlib rollback' " +
        "(post { failure { cdlibRollback(afterFailure: true) } } does)"
}

/** [kind: 'ok' | 'unstable' | 'error', message: ...] for an exit code and the JSON result. */
@NonCPS
Map verdict(Map cmd, int code, Map result) {
    String title = cmd.title
    String service = result.service ? String.valueOf(result.service) : 'the service'
    String message = result.message ? String.valueOf(result.message) : 'no result file; see the log above'
    List suites = unstableSuites(result)
    if (suites && (code == 0 || (code == 1 && cmd.verb == 'test'))) {
        return [kind: 'unstable', message: "cdlib ${title}: ${suites.join(', ')} tests of ${service} failed; " +
                "the descriptor marks them unstable, so the build is UNSTABLE: ${message}".toString()]
    }
    switch (code) {
        case 0:
            return [kind: 'ok', message: message]
        case 1:
            if (cmd.undoes) {
                return [kind: 'error',
                        message: "cdlib ${title} failed for ${service}; the release was rolled back: ${message}".toString()]
            }
            if (cmd.role == 'none') {
                return [kind: 'error', message: "cdlib ${title} failed for ${service}: ${message}".toString()]
            }
            return [kind: 'error', message: "cdlib ${title} failed for ${service}; the release was not rolled back " +
                    "and is still open: ${message}".toString()]
        case 2:
            return [kind: 'error', message: "cdlib ${title}: bad input, nothing was changed: ${message}".toString()]
        case 3:
            Object holder = result.error instanceof Map ? result.error.holder : null
            if (message.startsWith('another release of ')) {
                return [kind: 'error', message: holder instanceof Map
                        ? "another release of ${service} is running: ${holderText(result)}".toString() : message]
            }
            return [kind: 'error', message: "cdlib ${title}: ${message}".toString() +
                    (holder instanceof Map ? " (${holderText(result)})".toString() : '')]
        case 4:
            return [kind: 'error', message: "cdlib ${title} failed for ${service} and the undo is incomplete: " +
                    "a person is needed (run 'cdlib status'): ${message}".toString()]
        case 5:
            return [kind: 'error', message: "cdlib ${title} failed for ${service} and the state is unknown" +
                    "${unknownHint(cmd)}: ${message}".toString()]
        case 137:
            return [kind: 'error', message: "cdlib ${title} was killed (exit 137: SIGKILL, e.g. a timeout or the " +
                    "out-of-memory killer)${unknownHint(cmd)}: ${message}".toString()]
        case 143:
            return [kind: 'error', message: "cdlib ${title} was terminated (exit 143: SIGTERM)${unknownHint(cmd)}: " +
                    "${message}".toString()]
        default:
            return [kind: 'error', message: "cdlib ${title} ended with exit code ${code} (not a cdlib exit code: " +
                    "is the CLI installed? set CDLIB_CLI)${unknownHint(cmd)}: ${message}".toString()]
    }
}
