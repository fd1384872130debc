// The whole standard pipeline as one step, for scripted Jenkinsfiles:
//
//     @Library('cdlib') _
//     node {
//         def scmVars = checkout(scm)
//         cdlibPipeline(file: 'cdlib.yml', tag: scmVars.GIT_COMMIT.substring(0, 12))
//     }
//
// Stages: pre-deployment tests (builds only the test images, then runs the suite), build (only the
// service image), push (both), deploy, pre-integration tests, switch, post-integration tests,
// cleanup; each under its own timeout. On any failure a 'rollback' stage runs
// cdlibRollback(afterFailure: true) (it undoes only a release this build left open) and the failure
// is raised again. Parameters: vars/cdlibPipeline.txt.
def call(Map params = [:]) {
    Map p = params ?: [:]
    String problem = check(p)
    if (problem) {
        error(problem)
    }
    String tag = p.tag ? String.valueOf(p.tag) : shortCommit(env.GIT_COMMIT)
    if (!tag) {
        error('cdlibPipeline: no tag: pass tag: (e.g. the commit, checkout(scm).GIT_COMMIT.substring(0, 12)) ' +
              'or run it where GIT_COMMIT is set')
    }
    Map limits = minutes(p.timeouts ?: [:])
    Map plain = select(p, ['file', 'store'])
    Map withSecrets = select(p, ['file', 'store', 'credentials'])
    Map lock = select(p, ['lockWait', 'lockTtl'])
    try {
        stage('pre-deployment tests') {
            timeout(time: limits['pre-deployment'], unit: 'MINUTES') {
                cdlibBuild(withSecrets + [only: 'tests', tag: tag])
                cdlibTest(plain + [type: 'pre-deployment', tag: tag])
            }
        }
        stage('build') {
            timeout(time: limits['build'], unit: 'MINUTES') { cdlibBuild(withSecrets + [only: 'service', tag: tag]) }
        }
        stage('push') {
            timeout(time: limits['push'], unit: 'MINUTES') { cdlibPush(withSecrets + [tag: tag]) }
        }
        stage('deploy') {
            timeout(time: limits['deploy'], unit: 'MINUTES') { cdlibDeploy(withSecrets + lock + [tag: tag]) }
        }
        stage('pre-integration tests') {
            timeout(time: limits['pre-integration'], unit: 'MINUTES') {
                cdlibTest(plain + [type: 'pre-integration', tag: tag])
            }
        }
        stage('switch') {
            timeout(time: limits['switch'], unit: 'MINUTES') { cdlibSwitch(plain) }
        }
        stage('post-integration tests') {
            timeout(time: limits['post-integration'], unit: 'MINUTES') {
                cdlibTest(plain + [type: 'post-integration', tag: tag])
            }
        }
        stage('cleanup') {
            timeout(time: limits['cleanup'], unit: 'MINUTES') { cdlibCleanup(plain) }
        }
    } catch (err) {
        stage('rollback') {
            timeout(time: limits['rollback'], unit: 'MINUTES') {
                cdlibRollback(withSecrets + lock + [afterFailure: true])
            }
        }
        throw err
    }
}

@NonCPS
String check(Map p) {
    List keys = ['file', 'store', 'tag', 'credentials', 'lockWait', 'lockTtl', 'timeouts']
    for (Object k in p.keySet()) {
        if (!keys.contains(String.valueOf(k))) {
            return "cdlibPipeline: unknown parameter '${k}'; it takes: ${keys.join(', ')}".toString()
        }
    }
    if (p.timeouts != null && !(p.timeouts instanceof Map)) {
        return 'cdlibPipeline: timeouts: expected a map of stage to minutes, e.g. [deploy: 20]'
    }
    for (Object k in (p.timeouts ?: [:]).keySet()) {
        if (!minutes([:]).containsKey(String.valueOf(k))) {
            return "cdlibPipeline: timeouts: unknown stage '${k}'; stages: ${minutes([:]).keySet().join(', ')}".toString()
        }
        Object v = p.timeouts[k]
        if (!(v instanceof Number) || v <= 0) {
            return "cdlibPipeline: timeouts.${k}: expected a number of minutes above 0, got ${v}".toString()
        }
    }
    return null
}

/** Minutes per stage: the defaults, overridden by the caller's timeouts. */
@NonCPS
Map minutes(Map given) {
    Map m = ['pre-deployment': 20, 'build': 30, 'push': 15, 'deploy': 15, 'pre-integration': 20, 'switch': 5,
             'post-integration': 20, 'cleanup': 10, 'rollback': 15]
    for (Object k in given.keySet()) {
        m[String.valueOf(k)] = given[k]
    }
    return m
}

@NonCPS
Map select(Map p, List keys) {
    Map out = [:]
    for (Object k in keys) {
        if (p[k] != null) {
            out[k] = p[k]
        }
    }
    return out
}

@NonCPS
String shortCommit(Object commit) {
    String c = commit ? String.valueOf(commit) : ''
    return c.length() >= 12 ? c.substring(0, 12) : c
}
