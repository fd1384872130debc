package io.cdlib

import com.cloudbees.groovy.cps.NonCPS

/**
 * Turns a step's named parameters into the command line of one cdlib verb, or a one-line problem.
 *
 *   CommandPlan.of('deploy', [tag: 'abc123', lockWait: 300], ['tag', 'image', 'lockWait', 'lockTtl'])
 *
 * checks the parameters against the ones the verb takes (and the value of a parameter with a fixed
 * set of choices), then builds the argument list in a fixed order, every argument single-quoted.
 */
class CommandPlan implements Serializable {

    private static final long serialVersionUID = 1L

    @NonCPS
    static String stepName(String verb) {
        return 'cdlib' + verb.substring(0, 1).toUpperCase() + verb.substring(1)
    }

    /**
     * Everything the step needs, or `problem` (a one-line message) when the parameters are wrong:
     * argv, script, resultFile, junit (an Ant pattern to publish, or null), bindings (checked
     * credential entries), title (the verb as the user reads it, e.g. "test pre-integration"),
     * verb, role (ReleaseState.role) and undoes (ReleaseState.undoesOnFailure).
     */
    @NonCPS
    static Map of(String verb, Map params, List keys) {
        String step = stepName(verb)
        Map values = [:]
        String problem = collect(step, params, keys, values) ?: conflict(step, keys, values) ?:
            StepOptions.badChoice(step, values)
        if (problem) {
            return [problem: problem]
        }
        String title = values.type ? "${verb} ${values.type}".toString() : verb
        // a step that covers part of the verb's work keeps its own result file (build of the test images
        // and build of the service image in one pipeline must not overwrite each other's result)
        String part = values.type ?: values.only
        String suffix = part ? "${verb}-${part}".toString() : verb
        if (!values.resultFile) {
            values.resultFile = "cdlib-result-${suffix}.json".toString()
        }
        List stale = [Shell.quote(values.resultFile)]
        String junit = reports(verb, values, stale)
        Map checked = Credentials.check(step, values.credentials)
        if (checked.problem) {
            return checked
        }
        List argv = argv(verb, values)
        String script = "rm -f -- ${stale.join(' ')}\n${Shell.launcher()} ${Shell.words(argv)}"
        return [argv: argv, script: script, resultFile: String.valueOf(values.resultFile), junit: junit,
                bindings: checked.bindings, title: title, verb: verb, role: ReleaseState.role(verb, values),
                undoes: ReleaseState.undoesOnFailure(verb, values)]
    }

    /** Copies the given parameters into `values` under their keys; the problem, or null. */
    @NonCPS
    private static String collect(String step, Map params, List keys, Map values) {
        Map byName = StepOptions.byName()
        List allowed = keys + StepOptions.commonKeys()
        for (Object k in params.keySet()) {
            Map o = byName[String.valueOf(k)]
            String key = o ? o.key : String.valueOf(k)
            if (!allowed.contains(key)) {
                return "${step}: unknown parameter '${k}'; it takes: ${allowed.join(', ')}".toString()
            }
            if (!o && key != 'credentials') {
                // a parameter the step takes but cannot pass on would be dropped from the command line
                return "${step}: parameter '${k}' has no command-line option in StepOptions".toString()
            }
            if (values.containsKey(key) && params[k] != null) {
                return "${step}: '${k}' is given twice (as ${key} and as its alias)".toString()
            }
            if (params[k] != null) {
                values[key] = params[k]
            }
        }
        return null
    }

    /** Parameters that are missing or exclude each other; the problem, or null. */
    @NonCPS
    private static String conflict(String step, List keys, Map values) {
        if (keys.contains('type') && !values.type) {
            return "${step}: type is required: pre-deployment, pre-integration or post-integration".toString()
        }
        if (values.containsKey('tag') && values.containsKey('image')) {
            return "${step}: give tag or image, not both".toString()
        }
        if (values.containsKey('to') && StepOptions.isTrue(values.previous)) {
            return "${step}: give to or previous, not both".toString()
        }
        return null
    }

    /**
     * The JUnit reports of a test or release (an Ant pattern for junit, or null), their default path
     * set in `values`, and the stale copies to remove added to `stale`.
     */
    @NonCPS
    private static String reports(String verb, Map values, List stale) {
        if (verb == 'test') {
            if (!values.junit) {
                values.junit = "cdlib-reports/${values.type}.xml".toString()
            }
            stale << Shell.quote(values.junit)
            return String.valueOf(values.junit)
        }
        if (verb == 'release') {
            if (!values.junitDir) {
                values.junitDir = 'cdlib-reports'
            }
            stale << Shell.quote(values.junitDir) + '/*.xml'
            return "${values.junitDir}/*.xml".toString()
        }
        return null
    }

    /** The argument list, in the order of StepOptions.options(). */
    @NonCPS
    private static List argv(String verb, Map values) {
        List out = [verb]
        for (Map o in StepOptions.options()) {
            if (!values.containsKey(o.key)) {
                continue
            }
            Object v = values[o.key]
            if (o.flag == null) {
                out << String.valueOf(v)
            } else if (o.bool) {
                if (StepOptions.isTrue(v)) {
                    out << o.flag
                }
            } else {
                out << o.flag
                out << String.valueOf(v)
            }
        }
        return out
    }

}
