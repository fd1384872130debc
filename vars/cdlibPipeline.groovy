import io.cdlib.PipelineStages

// The whole standard pipeline as one step, for scripted Jenkinsfiles (the root Jenkinsfile runs it):
//
//     @Library('cdlib') _
//     node {
//         def scmVars = checkout(scm)
//         cdlibPipeline(file: 'cdlib.yml', tag: scmVars.GIT_COMMIT.substring(0, 12))
//     }
//
// Stages: pre-deployment tests (builds only the test images, then runs the suite), build (only the
// service image), push (both), deploy, pre-integration tests, switch, post-integration tests,
// cleanup; each under its own timeout (the stage list and the minutes: src/io/cdlib/PipelineStages).
// On any failure a 'rollback' stage runs cdlibRollback(afterFailure: true) (it undoes only a release
// this build left open) and the failure is raised again. Parameters: vars/cdlibPipeline.txt.
void call(Map params = [:]) {
    Map p = params ?: [:]
    String problem = PipelineStages.check(p)
    if (problem) {
        error(problem)
    }
    String tag = p.tag ? String.valueOf(p.tag) : PipelineStages.shortCommit(env.GIT_COMMIT)
    if (!tag) {
        error('cdlibPipeline: no tag: pass tag: (e.g. the commit, checkout(scm).GIT_COMMIT.substring(0, 12)) ' +
              'or run it where GIT_COMMIT is set')
    }
    Map limits = PipelineStages.minutes(p.timeouts ?: [:])
    Map plain = PipelineStages.select(p, ['file', 'store'])
    Map withSecrets = PipelineStages.select(p, ['file', 'store', 'credentials'])
    Map lock = PipelineStages.select(p, ['lockWait', 'lockTtl'])
    try {
        timedStage('pre-deployment tests', limits) {
            cdlibBuild(withSecrets + [only: 'tests', tag: tag])
            cdlibTest(plain + [type: 'pre-deployment', tag: tag])
        }
        timedStage('build', limits) { cdlibBuild(withSecrets + [only: 'service', tag: tag]) }
        timedStage('push', limits) { cdlibPush(withSecrets + [tag: tag]) }
        timedStage('deploy', limits) { cdlibDeploy(withSecrets + lock + [tag: tag]) }
        timedStage('pre-integration tests', limits) { cdlibTest(plain + [type: 'pre-integration', tag: tag]) }
        timedStage('switch', limits) { cdlibSwitch(plain) }
        timedStage('post-integration tests', limits) { cdlibTest(plain + [type: 'post-integration', tag: tag]) }
        timedStage('cleanup', limits) { cdlibCleanup(plain) }
    } catch (err) {
        timedStage('rollback', limits) { cdlibRollback(withSecrets + lock + [afterFailure: true]) }
        throw err
    }
}

/** A stage under its timeout from PipelineStages (a stage missing from that table fails the build). */
void timedStage(String name, Map limits, Closure body) {
    if (!limits.containsKey(name)) {
        error("cdlibPipeline: stage '${name}' has no entry in PipelineStages")
    }
    stage(name) {
        timeout(time: limits[name], unit: 'MINUTES') {
            body()
        }
    }
}
