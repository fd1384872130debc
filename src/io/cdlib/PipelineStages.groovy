package io.cdlib

import com.cloudbees.groovy.cps.NonCPS

/**
 * The stages of the standard cdlib pipeline (vars/cdlibPipeline.groovy, which the Jenkinsfile runs),
 * in order, each with the key of its timeout and its default minutes. This table is the only
 * definition of the stage list and the timeouts; 'rollback' runs only after a failure.
 */
class PipelineStages implements Serializable {

    private static final long serialVersionUID = 1L
    private static final String NAME = 'cdlibPipeline'

    /** [stage name, timeout key, default minutes], in the order the stages run. */
    @NonCPS
    static List table() {
        return [
            ['pre-deployment tests', 'pre-deployment', 20],
            ['build', 'build', 30],
            ['push', 'push', 15],
            ['deploy', 'deploy', 15],
            ['pre-integration tests', 'pre-integration', 20],
            ['switch', 'switch', 5],
            ['post-integration tests', 'post-integration', 20],
            ['cleanup', 'cleanup', 10],
            ['rollback', 'rollback', 15],
        ]
    }

    /** The names of the stages a successful run goes through, in order (all but 'rollback'). */
    @NonCPS
    static List names() {
        return table().collect { it[0] } - ['rollback']
    }

    /** The parameters cdlibPipeline takes. */
    @NonCPS
    static List keys() {
        return ['file', 'store', 'tag', 'credentials', 'lockWait', 'lockTtl', 'timeouts']
    }

    /** Minutes per stage name: the defaults, overridden by the caller's timeouts (keyed by timeout key). */
    @NonCPS
    static Map minutes(Map given) {
        Map byKey = [:]
        for (Object k in given.keySet()) {
            byKey[String.valueOf(k)] = given[k]
        }
        Map out = [:]
        for (List row in table()) {
            out[row[0]] = byKey.containsKey(row[1]) ? byKey[row[1]] : row[2]
        }
        return out
    }

    /** The problem with cdlibPipeline's parameters (one line), or null. */
    @NonCPS
    static String check(Map p) {
        for (Object k in p.keySet()) {
            if (!keys().contains(String.valueOf(k))) {
                return "${NAME}: unknown parameter '${k}'; it takes: ${keys().join(', ')}".toString()
            }
        }
        if (p.timeouts != null && !(p.timeouts instanceof Map)) {
            return "${NAME}: timeouts: expected a map of stage to minutes, e.g. [deploy: 20]".toString()
        }
        List timeoutKeys = table().collect { it[1] }
        for (Object k in (p.timeouts ?: [:]).keySet()) {
            if (!timeoutKeys.contains(String.valueOf(k))) {
                return "${NAME}: timeouts: unknown stage '${k}'; stages: ${timeoutKeys.join(', ')}".toString()
            }
            Object v = p.timeouts[k]
            if (!(v instanceof Number) || v <= 0) {
                return "${NAME}: timeouts.${k}: expected a number of minutes above 0, got ${v}".toString()
            }
        }
        return null
    }

    /** The entries of `p` named in `keys` that are set. */
    @NonCPS
    static Map select(Map p, List keys) {
        Map out = [:]
        for (Object k in keys) {
            if (p[k] != null) {
                out[k] = p[k]
            }
        }
        return out
    }

    /** A commit id shortened to the 12 characters of an image tag. */
    @NonCPS
    static String shortCommit(Object commit) {
        String c = commit ? String.valueOf(commit) : ''
        return c.length() >= 12 ? c.substring(0, 12) : c
    }

}
