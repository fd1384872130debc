package io.cdlib

import com.cloudbees.groovy.cps.NonCPS

/**
 * The `credentials:` parameter of the steps:
 * [[id: 'x', variable: 'V'], [id: 'y', usernameVariable: 'U', passwordVariable: 'P'],
 *  [id: 'z', variable: 'F', type: 'file']].
 */
class Credentials implements Serializable {

    private static final long serialVersionUID = 1L
    private static final String SHAPE = "[id: 'ID', variable: 'NAME'] (type: 'string' or 'file') or " +
        "[id: 'ID', usernameVariable: 'USER', passwordVariable: 'PASSWORD']"

    /** [bindings: [checked entries]] or [problem: 'one line']. */
    @NonCPS
    static Map check(String step, Object given) {
        if (given == null) {
            return [bindings: []]
        }
        if (!(given instanceof List)) {
            return [problem: "${step}: credentials: expected a list of ${SHAPE}".toString()]
        }
        List out = []
        int i = 0
        for (Object c in given) {
            String where = "${step}: credentials[${i}]"
            i++
            String problem = entryProblem(c)
            if (problem) {
                return [problem: "${where}: ${problem}".toString()]
            }
            Map entry = [id: String.valueOf(c.id)]
            if (c.usernameVariable) {
                entry.usernameVariable = String.valueOf(c.usernameVariable)
                entry.passwordVariable = String.valueOf(c.passwordVariable)
            } else {
                entry.variable = String.valueOf(c.variable)
                entry.type = c.type ? String.valueOf(c.type) : 'string'
            }
            out << entry
        }
        return [bindings: out]
    }

    /**
     * The withCredentials bindings for checked entries. `script` is the running step (usernamePassword,
     * file and string are pipeline steps, so this method is not @NonCPS).
     */
    static List bindings(Object script, List entries) {
        List out = []
        for (Map c in entries) {
            if (c.usernameVariable) {
                out << script.usernamePassword(credentialsId: c.id, usernameVariable: c.usernameVariable,
                                               passwordVariable: c.passwordVariable)
            } else if (c.type == 'file') {
                out << script.file(credentialsId: c.id, variable: c.variable)
            } else {
                out << script.string(credentialsId: c.id, variable: c.variable)
            }
        }
        return out
    }

    @NonCPS
    private static String entryProblem(Object c) {
        if (!(c instanceof Map) || !(c.id instanceof CharSequence) || !c.id) {
            return "expected ${SHAPE}".toString()
        }
        List names = c.usernameVariable ? [c.usernameVariable, c.passwordVariable] : [c.variable]
        for (Object n in names) {
            if (!(n instanceof CharSequence) || !(String.valueOf(n) ==~ /[A-Za-z_][A-Za-z0-9_]*/)) {
                return "expected ${SHAPE}; variable names are [A-Za-z_][A-Za-z0-9_]*".toString()
            }
        }
        String type = c.type ? String.valueOf(c.type) : 'string'
        if (!(type in ['string', 'file']) || (c.usernameVariable && c.type)) {
            return "type must be 'string' or 'file' (username/password entries have none)"
        }
        return null
    }

}
