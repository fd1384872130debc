package io.cdlib

import com.cloudbees.groovy.cps.NonCPS

/** Shell text for Jenkins' sh step: every value single-quoted, the CLI left to the shell. */
class Shell implements Serializable {

    private static final long serialVersionUID = 1L

    /** The shell text that starts the CLI; CDLIB_CLI is expanded (and split into words) by the shell. */
    @NonCPS
    static String launcher() {
        // single quotes on purpose: the shell, not Groovy, expands CDLIB_CLI
        return 'PYTHONUNBUFFERED=1 ${CDLIB_CLI:-python3 -m cdlib}'
    }

    /** A shell word that stands for exactly `value`: single quotes, an embedded ' written as '\''. */
    @NonCPS
    static String quote(Object value) {
        return "'" + String.valueOf(value).replace("'", "'\\''") + "'"
    }

    /** The shell words for a list of values, joined by spaces. */
    @NonCPS
    static String words(List values) {
        List out = []
        for (Object v in values) {
            out << quote(v)
        }
        return out.join(' ')
    }

}
