package io.cdlib

import com.cloudbees.groovy.cps.NonCPS

/**
 * The named parameters of the cdlib steps, in the order their options appear on the command line.
 * `flag: null` is the verb's positional argument; `bool: true` is an option without a value;
 * `choices` are the only values the option takes (checked before anything runs).
 */
class StepOptions implements Serializable {

    private static final long serialVersionUID = 1L

    @NonCPS
    static List options() {
        return [
            [key: 'type', flag: null],
            [key: 'replicas', flag: null],
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
            [key: 'dryRun', alias: 'dry-run', flag: '--dry-run', bool: true],
            [key: 'next', flag: '--next', bool: true],
            [key: 'limit', flag: '--limit'],
            [key: 'watch', flag: '--watch', bool: true],
            [key: 'interval', flag: '--interval'],
            [key: 'maxRounds', alias: 'max-rounds', flag: '--max-rounds'],
            [key: 'maxSeconds', alias: 'max-seconds', flag: '--max-seconds'],
            [key: 'resultFile', alias: 'result-file', flag: '--result-file'],
        ]
    }

    /** Parameters every step takes besides its own. */
    @NonCPS
    static List commonKeys() {
        return ['file', 'store', 'credentials', 'resultFile']
    }

    /** Every option by its key and by its alias (the CLI spelling). */
    @NonCPS
    static Map byName() {
        Map out = [:]
        for (Map o in options()) {
            out[o.key] = o
            if (o.alias) {
                out[o.alias] = o
            }
        }
        return out
    }

    /** The problem with the first value outside its option's `choices`, or null. */
    @NonCPS
    static String badChoice(String step, Map values) {
        for (Map o in options()) {
            if (o.choices && values.containsKey(o.key) && !(String.valueOf(values[o.key]) in o.choices)) {
                List shown = o.choices.collect { "'${it}'" }
                return "${step}: ${o.key} must be ${shown.join(' or ')}, got '${values[o.key]}'".toString()
            }
        }
        return null
    }

    @NonCPS
    static boolean isTrue(Object v) {
        return v == true || String.valueOf(v) == 'true'
    }

}
