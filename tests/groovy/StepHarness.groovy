/*
 * Compiles the shared library (vars/*.groovy) and the Jenkinsfile with Groovy 2.4 (the version
 * Jenkins core bundles) and runs the steps against recorded pipeline steps:
 *
 *   sh            returns the exit code a case scripts, and "writes" the case's JSON result
 *   readJSON      returns that result (only with returnPojo: true)
 *   fileExists, junit, error (throws), unstable, echo, withCredentials (+ string, file,
 *   usernamePassword), stage, timeout, archiveArtifacts, env (a map)
 *
 * It checks the exact argument lists, the quoting, the credential bindings, the exit-code mapping,
 * the stage order of the Jenkinsfile (declarative syntax evaluated by a small DSL stub) and of
 * cdlibPipeline, and which rollbacks a failure triggers.
 *
 *   groovy tests/groovy/StepHarness.groovy [--root DIR] [--emit FILE] [--variant LABEL=DIR]... --cli-results DIR
 *
 * Prints one line per check and a closing "N passed, M failed" line; exits 1 on any failure.
 * --variant runs every check again, in the same JVM, against another copy of the library (e.g. one
 * with a bug planted, to prove the checks catch it): its lines start with "variant LABEL: " and do not
 * count towards the exit code; the closing line is always the one of --root.
 * --emit writes every command the steps ran as JSON ([{case, step, argv, script}]) for the Python
 * tests, which run the scripts through a real shell and parse the argument lists with the CLI's parser.
 * --cli-results names a directory of result files the real CLI wrote (lock-held.json, unknown.json,
 * bad-input.json; tests/groovy/harness.py makes them with cdlib.cli.main), which the steps
 * are checked against, so the two sides cannot drift apart.
 */

import groovy.json.JsonOutput
import org.codehaus.groovy.control.CompilerConfiguration
import org.codehaus.groovy.control.customizers.ImportCustomizer

// ---- arguments ------------------------------------------------------------------------------------
File root = new File(getClass().protectionDomain.codeSource.location.path).parentFile.parentFile.parentFile
String emit = null
File cliResults = null
Map variants = [:]   // label -> a copy of the library to check as well (in this JVM), e.g. a broken one
String label = null  // set when this run checks a variant
for (int i = 0; i < args.length; i++) {
    if (args[i] == '--root') {
        root = new File(args[++i])
    } else if (args[i] == '--emit') {
        emit = args[++i]
    } else if (args[i] == '--cli-results') {
        cliResults = new File(args[++i])
    } else if (args[i] == '--variant' && args[i + 1].contains('=')) {
        List kv = args[++i].split('=', 2) as List
        variants[kv[0]] = kv[1]
    } else if (args[i] == '--label') {
        label = args[++i]
    } else {
        System.err.println('usage: groovy StepHarness.groovy [--root DIR] [--emit FILE] [--variant LABEL=DIR]... ' +
                           '--cli-results DIR')
        System.exit(2)
    }
}
root = root.canonicalFile

// ---- results --------------------------------------------------------------------------------------
class Report {
    int passed = 0
    int failed = 0
    List emitted = []
    String prefix = ''

    void check(String name, boolean ok, Object detail = '') {
        if (ok) {
            passed++
            println "${prefix}ok - ${name}"
        } else {
            failed++
            println "${prefix}not ok - ${name}: ${detail}"
        }
    }

    void equal(String name, Object actual, Object expected) {
        check(name, actual == expected, "expected ${JsonOutput.toJson(expected)}, got ${JsonOutput.toJson(actual)}")
    }
}

class StepFailed extends RuntimeException {
    StepFailed(String message) { super(message) }
}

/** The shell words of a line made of '...' segments (with '\'' escapes) and backslash escapes. */
List shellWords(String line) {
    List words = []
    StringBuilder cur = null
    int i = 0
    while (i < line.length()) {
        char ch = line.charAt(i)
        if (ch == ' ' as char) {
            if (cur != null) {
                words << cur.toString()
                cur = null
            }
            i++
        } else if (ch == "'" as char) {
            int end = line.indexOf("'", i + 1)
            if (end < 0) {
                throw new IllegalArgumentException("unterminated quote in: ${line}")
            }
            cur = (cur ?: new StringBuilder()).append(line.substring(i + 1, end))
            i = end + 1
        } else if (ch == '\\' as char) {
            cur = (cur ?: new StringBuilder()).append(line.charAt(i + 1))
            i += 2
        } else {
            cur = (cur ?: new StringBuilder()).append(ch)
            i++
        }
    }
    if (cur != null) {
        words << cur.toString()
    }
    return words
}

// ---- a recorded pipeline ------------------------------------------------------------------------
final String LAUNCHER = 'PYTHONUNBUFFERED=1 ${CDLIB_CLI:-python3 -m cdlib} '

/** One run: the environment, the recorded calls, and what the "CLI" answers. */
class Ctx {
    Map env = [:]
    List calls = []
    List commands = []  // [argv, script, label, env snapshot] for every cdlib command line
    Map files = [:]     // result files the fake CLI wrote
    Closure cli         // argv -> [code, result map or null]
    Binding binding = new Binding()
    Set secrets = [] as Set

    List named(String name) { calls.findAll { it.name == name } }
    List verbs() { commands.collect { verbOf(it.argv) } }

    /** 'test TYPE', 'VERB ONLY' for a build or push of one part (e.g. 'build tests'), else the verb. */
    static String verbOf(List argv) {
        if (argv[0] == 'test') {
            return "test ${argv[1]}".toString()
        }
        int at = argv.indexOf('--only')
        return at >= 0 ? "${argv[0]} ${argv[at + 1]}".toString() : argv[0]
    }
}

Map steps = [:]  // name -> File
new File(root, 'vars').listFiles().findAll { it.name.endsWith('.groovy') }.sort { it.name }.each {
    steps[it.name - '.groovy'] = it
}

GroovyClassLoader loader = new GroovyClassLoader(getClass().classLoader)
loader.parseClass('''package com.cloudbees.groovy.cps
import java.lang.annotation.*
@Retention(RetentionPolicy.RUNTIME)
@interface NonCPS {}
''')
loader.parseClass('''package org.jenkinsci.plugins.workflow.libs
import java.lang.annotation.*
@Retention(RetentionPolicy.SOURCE)
@interface Library { String[] value() }
''')
CompilerConfiguration compiler = new CompilerConfiguration()
ImportCustomizer imports = new ImportCustomizer()
// Jenkins adds both to every pipeline script and library class
imports.addImports('com.cloudbees.groovy.cps.NonCPS', 'org.jenkinsci.plugins.workflow.libs.Library')
compiler.addCompilationCustomizers(imports)
// the library's classes (src/), as Jenkins puts them on the classpath of the steps and the Jenkinsfile
loader.addClasspath(new File(root, 'src').path)

Report report = new Report(prefix: label ? "variant ${label}: ".toString() : '')

// ---- 1. everything compiles with Groovy 2.4 ------------------------------------------------------
Map compiled = [:]
steps.each { name, file ->
    try {
        compiled[name] = new GroovyShell(loader, new Binding(), compiler).parse(file).getClass()
        report.check("compiles vars/${name}.groovy", true)
    } catch (Throwable t) {
        report.check("compiles vars/${name}.groovy", false, t.message)
    }
    report.check("vars/${name}.txt exists", new File(root, "vars/${name}.txt").isFile(), 'missing help file')
}
File srcDir = new File(root, 'src')
List srcClasses = []
if (srcDir.isDirectory()) {
    srcDir.eachFileRecurse { File f ->
        if (f.name.endsWith('.groovy')) {
            srcClasses << (f.path.substring(srcDir.path.length() + 1) - '.groovy').replace(File.separator, '.')
        }
    }
}
srcClasses.sort().each { String name ->
    try {
        loader.loadClass(name)
        report.check("compiles src class ${name}", true)
    } catch (Throwable t) {
        report.check("compiles src class ${name}", false, t.message)
    }
}
report.check('the library has src/ classes', !srcClasses.isEmpty(), srcDir)
Class jenkinsfileClass = null
try {
    jenkinsfileClass = new GroovyShell(loader, new Binding(), compiler).parse(new File(root, 'Jenkinsfile')).getClass()
    report.check('compiles Jenkinsfile', true)
} catch (Throwable t) {
    report.check('compiles Jenkinsfile', false, t.message)
}
List expectedSteps = ['cdlibBuild', 'cdlibCleanup', 'cdlibColor', 'cdlibDeploy', 'cdlibHeal', 'cdlibHistory', 'cdlibPipeline',
                      'cdlibPush', 'cdlibRelease', 'cdlibRollback', 'cdlibRun', 'cdlibScale', 'cdlibStatus', 'cdlibSwitch',
                      'cdlibTest']
report.equal('one step per verb, plus cdlibPipeline and cdlibRun', steps.keySet().sort(), expectedSteps)

// ---- 2. the recorded pipeline steps --------------------------------------------------------------
/** A fresh run with every pipeline step recorded and the library steps bound as global variables. */
Closure newCtx = { Map opts = [:] ->
    Ctx ctx = new Ctx()
    ctx.env.putAll(opts.env ?: [:])
    ctx.cli = opts.cli ?: { List argv -> [0, [verb: argv[0], service: 'demo', ok: true, exit_code: 0, message: 'done']] }
    Binding b = ctx.binding
    b.setVariable('env', ctx.env)
    b.setVariable('params', opts.params ?: [:])
    b.setVariable('sh', { Object a ->
        Map m = a instanceof Map ? a : [script: String.valueOf(a)]
        ctx.calls << [name: 'sh', args: m]
        String script = String.valueOf(m.script)
        String last = script.readLines().last()
        if (!last.startsWith(LAUNCHER)) {
            return m.returnStatus ? 0 : null  // not a cdlib command (e.g. the demo's prepare.sh)
        }
        List argv = shellWords(last.substring(LAUNCHER.length()))
        ctx.commands << [argv: argv, script: script, label: m.label, returnStatus: m.returnStatus,
                         env: new LinkedHashMap(ctx.env)]
        List answer = ctx.cli(argv)
        int at = argv.indexOf('--result-file')
        if (at >= 0 && answer[1] != null) {
            ctx.files[argv[at + 1]] = answer[1]
        }
        return m.returnStatus ? answer[0] : null
    })
    b.setVariable('fileExists', { Object a ->
        ctx.calls << [name: 'fileExists', args: a]
        return ctx.files.containsKey(a instanceof Map ? a.file : String.valueOf(a))
    })
    b.setVariable('readJSON', { Map a ->
        ctx.calls << [name: 'readJSON', args: a]
        if (a.returnPojo != true) {
            throw new StepFailed('readJSON without returnPojo: true returns json-lib objects')
        }
        if (!ctx.files.containsKey(a.file)) {
            throw new StepFailed("readJSON: ${a.file} does not exist")
        }
        return new groovy.json.JsonSlurper().parseText(JsonOutput.toJson(ctx.files[a.file]))
    })
    b.setVariable('junit', { Map a -> ctx.calls << [name: 'junit', args: a] })
    b.setVariable('error', { Object msg ->
        ctx.calls << [name: 'error', args: String.valueOf(msg)]
        throw new StepFailed(String.valueOf(msg))
    })
    b.setVariable('unstable', { Object msg -> ctx.calls << [name: 'unstable', args: String.valueOf(msg)] })
    b.setVariable('echo', { Object msg -> ctx.calls << [name: 'echo', args: String.valueOf(msg)] })
    b.setVariable('archiveArtifacts', { Map a -> ctx.calls << [name: 'archiveArtifacts', args: a] })
    b.setVariable('string', { Map a -> [binding: 'string'] + a })
    b.setVariable('file', { Map a -> [binding: 'file'] + a })
    b.setVariable('usernamePassword', { Map a -> [binding: 'usernamePassword'] + a })
    b.setVariable('withCredentials', { List bindings, Closure body ->
        ctx.calls << [name: 'withCredentials', args: bindings]
        List vars = []
        bindings.each { Map bd ->
            ['variable', 'usernameVariable', 'passwordVariable'].each { k ->
                if (bd[k]) {
                    String value = "s3cr3t-${bd.credentialsId}-${bd[k]}".toString()
                    ctx.env[bd[k]] = value
                    ctx.secrets << value
                    vars << bd[k]
                }
            }
        }
        try {
            return body.call()
        } finally {
            vars.each { ctx.env.remove(it) }
        }
    })
    b.setVariable('stage', { String name, Closure body ->
        ctx.calls << [name: 'stage', args: name]
        return body.call()
    })
    b.setVariable('node', { Closure body ->
        ctx.calls << [name: 'node', args: [:]]
        return body.call()
    })
    b.setVariable('scm', [$class: 'GitSCM'])
    b.setVariable('checkout', { Object a ->
        ctx.calls << [name: 'checkout', args: a]
        return opts.commit ? [GIT_COMMIT: opts.commit] : [:]
    })
    b.setVariable('properties', { List a -> ctx.calls << [name: 'properties', args: a] })
    b.setVariable('timeout', { Map a, Closure body ->
        ctx.calls << [name: 'timeout', args: a]
        return body.call()
    })
    if (opts.stubs) {  // record library calls instead of running the library
        expectedSteps.each { String step ->
            b.setVariable(step, { Object[] a ->
                ctx.calls << [name: step, args: a.length ? a[0] : [:]]
                return [:]
            })
        }
    } else {
        steps.each { String name, File f ->
            Script s = compiled[name].newInstance()
            s.binding = b
            b.setVariable(name, { Object[] a -> s.invokeMethod('call', a) })
        }
    }
    return ctx
}

/** Runs one library step; returns [result, failure message or null]. */
Closure runStep = { Ctx ctx, String step, Map params ->
    try {
        return [ctx.binding.getVariable(step).call(params), null]
    } catch (StepFailed e) {
        return [null, e.message]
    } catch (Throwable t) {  // a harness or library bug: reported as a failed check, never a crash
        return [null, "CRASH ${t.class.name}: ${t.message}".toString()]
    }
}

Closure fixedCli = { int code, Map result -> { List argv -> [code, result] } }
Closure argvOf = { Ctx ctx -> ctx.commands ? ctx.commands[0].argv : null }
Closure emitAll = { String name, Ctx ctx ->
    ctx.commands.each { c -> report.emitted << [case: name, argv: c.argv, script: c.script] }
}

// the product order: the pre-deployment suite first (it builds only the test images it runs in)
List pipelineStages = ['pre-deployment tests', 'build', 'push', 'deploy', 'pre-integration tests', 'switch',
                       'post-integration tests', 'cleanup']
// the one definition of the stages and their timeouts, which cdlibPipeline (and so the Jenkinsfile) runs
Class stagesClass = loader.loadClass('io.cdlib.PipelineStages')
List pipelineVerbs = ['build tests', 'test pre-deployment', 'build service', 'push', 'deploy', 'test pre-integration',
                      'switch', 'test post-integration', 'cleanup']
Closure failingAt = { String verb, int code ->
    return { List argv ->
        String v = Ctx.verbOf(argv)
        int c = v == verb ? code : 0
        [c, [verb: argv[0], service: 'demo', ok: c == 0, exit_code: c, message: v == verb ? 'boom' : 'done']]
    }
}

/** Runs one part of the checks; an exception in the harness or the library fails it instead of crashing. */
Closure section = { String name, Closure body ->
    try {
        body.call()
    } catch (Throwable t) {
        report.check("${name}: runs to the end", false, "${t.class.name}: ${t.message}")
    }
}

// ---- 3. argument lists ---------------------------------------------------------------------------
section('3. argument lists') {
    List argCases = [
        [name: 'status', step: 'cdlibStatus', params: [:],
         argv: ['status', '--result-file', 'cdlib-result-status.json']],
        [name: 'color next', step: 'cdlibColor', params: [next: true, store: 'etcd://127.0.0.1:2379'],
         argv: ['color', '--store', 'etcd://127.0.0.1:2379', '--next', '--result-file', 'cdlib-result-color.json']],
        [name: 'color next false', step: 'cdlibColor', params: [next: false],
         argv: ['color', '--result-file', 'cdlib-result-color.json']],
        [name: 'history', step: 'cdlibHistory', params: [limit: 5],
         argv: ['history', '--limit', '5', '--result-file', 'cdlib-result-history.json']],
        [name: 'build', step: 'cdlibBuild', params: [tag: 'abc123def456', file: 'svc/cdlib.yml'],
         argv: ['build', '--file', 'svc/cdlib.yml', '--tag', 'abc123def456', '--result-file', 'cdlib-result-build.json']],
        [name: 'push', step: 'cdlibPush', params: [tag: 'v2'],
         argv: ['push', '--tag', 'v2', '--result-file', 'cdlib-result-push.json']],
        [name: 'build only the test images', step: 'cdlibBuild', params: [only: 'tests', tag: 'abc123def456', file: 'svc/cdlib.yml'],
         argv: ['build', '--file', 'svc/cdlib.yml', '--tag', 'abc123def456', '--only', 'tests',
                '--result-file', 'cdlib-result-build-tests.json']],
        [name: 'build only the service image', step: 'cdlibBuild', params: [tag: 'abc123def456', only: 'service'],
         argv: ['build', '--tag', 'abc123def456', '--only', 'service', '--result-file', 'cdlib-result-build-service.json']],
        [name: 'push only the service image', step: 'cdlibPush', params: [only: 'service', tag: 'v2', store: 'sqlite:///tmp/s.db'],
         argv: ['push', '--store', 'sqlite:///tmp/s.db', '--tag', 'v2', '--only', 'service',
                '--result-file', 'cdlib-result-push-service.json']],
        [name: 'push only the test images to an own result file', step: 'cdlibPush',
         params: [only: 'tests', resultFile: 'out/push.json'],
         argv: ['push', '--only', 'tests', '--result-file', 'out/push.json']],
        [name: 'build with only: null builds both', step: 'cdlibBuild', params: [tag: 'v2', only: null],
         argv: ['build', '--tag', 'v2', '--result-file', 'cdlib-result-build.json']],
        [name: 'test pre-integration', step: 'cdlibTest',
         params: [type: 'pre-integration', tag: 't1', targetUrl: 'http://127.0.0.1:9000/x', noRollback: true],
         argv: ['test', 'pre-integration', '--tag', 't1', '--target-url', 'http://127.0.0.1:9000/x',
                '--junit', 'cdlib-reports/pre-integration.xml', '--no-rollback',
                '--result-file', 'cdlib-result-test-pre-integration.json'],
         junit: 'cdlib-reports/pre-integration.xml'],
        [name: 'test with the CLI spelling of target-url and a junit path', step: 'cdlibTest',
         params: [type: 'post-integration', 'target-url': 'http://h/', junit: 'out/post.xml'],
         argv: ['test', 'post-integration', '--target-url', 'http://h/', '--junit', 'out/post.xml',
                '--result-file', 'cdlib-result-test-post-integration.json'],
         junit: 'out/post.xml'],
        [name: 'deploy', step: 'cdlibDeploy', params: [tag: 't1', lockWait: 300, lockTtl: 1800, store: 'sqlite:///tmp/s.db'],
         argv: ['deploy', '--store', 'sqlite:///tmp/s.db', '--tag', 't1', '--lock-wait', '300', '--lock-ttl', '1800',
                '--result-file', 'cdlib-result-deploy.json']],
        [name: 'deploy an image', step: 'cdlibDeploy', params: [image: '127.0.0.1:5000/demo:v3', 'lock-wait': 5],
         argv: ['deploy', '--image', '127.0.0.1:5000/demo:v3', '--lock-wait', '5', '--result-file', 'cdlib-result-deploy.json']],
        [name: 'switch', step: 'cdlibSwitch', params: [file: 'cdlib.yml'],
         argv: ['switch', '--file', 'cdlib.yml', '--result-file', 'cdlib-result-switch.json']],
        [name: 'switch dry run', step: 'cdlibSwitch', params: [dryRun: true],
         argv: ['switch', '--dry-run', '--result-file', 'cdlib-result-switch.json']],
        [name: 'cleanup', step: 'cdlibCleanup', params: [:],
         argv: ['cleanup', '--result-file', 'cdlib-result-cleanup.json']],
        [name: 'rollback to', step: 'cdlibRollback', params: [to: '20240101-120000-ab12', lockWait: 60],
         argv: ['rollback', '--lock-wait', '60', '--to', '20240101-120000-ab12', '--result-file', 'cdlib-result-rollback.json']],
        [name: 'rollback previous', step: 'cdlibRollback', params: [previous: true, lockWait: 5],
         argv: ['rollback', '--lock-wait', '5', '--previous', '--result-file', 'cdlib-result-rollback.json']],
        [name: 'rollback previous false', step: 'cdlibRollback', params: [previous: false],
         argv: ['rollback', '--result-file', 'cdlib-result-rollback.json']],
        [name: 'heal once', step: 'cdlibHeal', params: [:],
         argv: ['heal', '--result-file', 'cdlib-result-heal.json']],
        [name: 'heal watch', step: 'cdlibHeal', params: [watch: true, interval: 20, maxRounds: 3, 'max-seconds': 3500],
         argv: ['heal', '--watch', '--interval', '20', '--max-rounds', '3', '--max-seconds', '3500',
                '--result-file', 'cdlib-result-heal.json']],
        [name: 'heal watch false', step: 'cdlibHeal', params: [watch: false, store: 'etcd://127.0.0.1:2379'],
         argv: ['heal', '--store', 'etcd://127.0.0.1:2379', '--result-file', 'cdlib-result-heal.json']],
        [name: 'scale to a count', step: 'cdlibScale', params: [replicas: 4, lockWait: 30],
         argv: ['scale', '4', '--lock-wait', '30', '--result-file', 'cdlib-result-scale.json']],
        [name: 'scale up by two', step: 'cdlibScale', params: [replicas: '+2'],
         argv: ['scale', '+2', '--result-file', 'cdlib-result-scale.json']],
        [name: 'scale down by one', step: 'cdlibScale', params: [replicas: '-1', file: 'svc/cdlib.yml', 'lock-ttl': 600],
         argv: ['scale', '-1', '--file', 'svc/cdlib.yml', '--lock-ttl', '600', '--result-file', 'cdlib-result-scale.json']],
        [name: 'release', step: 'cdlibRelease', params: [tag: 'v9', junitDir: 'reports', lockTtl: 600],
         argv: ['release', '--tag', 'v9', '--junit-dir', 'reports', '--lock-ttl', '600', '--result-file', 'cdlib-result-release.json'],
         junit: 'reports/*.xml'],
        [name: 'release with defaults', step: 'cdlibRelease', params: [tag: 'v9'],
         argv: ['release', '--tag', 'v9', '--junit-dir', 'cdlib-reports', '--result-file', 'cdlib-result-release.json'],
         junit: 'cdlib-reports/*.xml'],
        [name: 'own result file', step: 'cdlibStatus', params: [resultFile: 'out/status.json'],
         argv: ['status', '--result-file', 'out/status.json']],
        [name: 'quoting', step: 'cdlibDeploy',
         params: [tag: "it's \$(touch pwned) `id` \"q\" \\ *", file: 'my dir/cdlib.yml'],
         argv: ['deploy', '--file', 'my dir/cdlib.yml', '--tag', "it's \$(touch pwned) `id` \"q\" \\ *",
                '--result-file', 'cdlib-result-deploy.json']],
    ]
    argCases.each { Map c ->
        Ctx ctx = newCtx()
        List r = runStep(ctx, c.step, c.params)
        report.check("${c.name}: succeeds", r[1] == null, r[1])
        report.equal("${c.name}: argument list", argvOf(ctx), c.argv)
        if (ctx.commands) {
            Map cmd = ctx.commands[0]
            List lines = cmd.script.readLines()
            report.check("${c.name}: runs the CLI through \$CDLIB_CLI or python3 -m cdlib",
                         lines.size() == 2 && lines[1].startsWith(LAUNCHER), cmd.script)
            String resultFile = c.argv[c.argv.indexOf('--result-file') + 1]
            report.check("${c.name}: removes a stale result file first",
                         lines[0].startsWith('rm -f -- ') && shellWords(lines[0]).contains(resultFile), lines[0])
            report.check("${c.name}: sh(returnStatus: true) with a label",
                         cmd.returnStatus == true && cmd.label == "cdlib ${c.argv[0] == 'test' ? 'test ' + c.argv[1] : c.argv[0]}",
                         "returnStatus ${cmd.returnStatus}, label ${cmd.label}")
            Map read = ctx.named('readJSON')[0]?.args
            report.equal("${c.name}: reads the result file", read, [file: resultFile, returnPojo: true])
        }
        List junits = ctx.named('junit').collect { it.args }
        report.equal("${c.name}: JUnit publishing", junits,
                     c.junit ? [[allowEmptyResults: true, testResults: c.junit]] : [])
        report.check("${c.name}: returns the JSON result", r[0] == [verb: c.argv[0], service: 'demo', ok: true,
                                                                  exit_code: 0, message: 'done'], r[0])
        report.equal("${c.name}: no credentials bound", ctx.named('withCredentials'), [])
        emitAll(c.name, ctx)
    }
}

// stale reports are removed with the result file
section('stale reports are removed') {
    Ctx staleCtx = newCtx()
    runStep(staleCtx, 'cdlibRelease', [tag: 'v1', junitDir: "it's"])
    report.equal('release: removes stale reports of its junit dir', staleCtx.commands[0].script.readLines()[0],
                 "rm -f -- 'cdlib-result-release.json' 'it'\\''s'/*.xml")
    staleCtx = newCtx()
    runStep(staleCtx, 'cdlibTest', [type: 'pre-deployment'])
    report.equal('test: removes a stale report', shellWords(staleCtx.commands[0].script.readLines()[0]),
                 ['rm', '-f', '--', 'cdlib-result-test-pre-deployment.json', 'cdlib-reports/pre-deployment.xml'])
}

// CDLIB_CLI is left to the shell: the script text never contains the environment's value
section('CDLIB_CLI is left to the shell') {
    Ctx cliCtx = newCtx(env: [CDLIB_CLI: '/opt/cdlib/bin/cdlib'])
    runStep(cliCtx, 'cdlibStatus', [:])
    report.check('CDLIB_CLI is expanded by the shell, not interpolated',
                 !cliCtx.commands[0].script.contains('/opt/cdlib') && cliCtx.commands[0].script.contains('${CDLIB_CLI:-python3 -m cdlib}'),
                 cliCtx.commands[0].script)
}

// ---- 4. credentials ------------------------------------------------------------------------------
section('4. credentials') {
    Ctx credCtx = newCtx()
    List credResult = runStep(credCtx, 'cdlibPush', [tag: 'v1', credentials: [
        [id: 'registry', usernameVariable: 'CDLIB_REGISTRY_USER', passwordVariable: 'CDLIB_REGISTRY_PASSWORD'],
        [id: 'token', variable: 'API_TOKEN'],
        [id: 'kubeconfig', variable: 'KUBECONFIG', type: 'file'],
    ]])
    report.check('credentials: push succeeds', credResult[1] == null, credResult[1])
    report.equal('credentials: withCredentials bindings', credCtx.named('withCredentials').collect { it.args }, [[
        [binding: 'usernamePassword', credentialsId: 'registry', usernameVariable: 'CDLIB_REGISTRY_USER',
         passwordVariable: 'CDLIB_REGISTRY_PASSWORD'],
        [binding: 'string', credentialsId: 'token', variable: 'API_TOKEN'],
        [binding: 'file', credentialsId: 'kubeconfig', variable: 'KUBECONFIG'],
    ]])
    report.check('credentials: the CLI runs inside withCredentials',
                 credCtx.commands[0].env.CDLIB_REGISTRY_PASSWORD == 's3cr3t-registry-CDLIB_REGISTRY_PASSWORD',
                 credCtx.commands[0].env)
    report.check('credentials: no secret in the script text',
                 !credCtx.secrets.any { credCtx.commands[0].script.contains(it) } && !credCtx.commands[0].argv.any { it.contains('s3cr3t') },
                 credCtx.commands[0].script)
    report.equal('credentials: not on the command line', credCtx.commands[0].argv,
                 ['push', '--tag', 'v1', '--result-file', 'cdlib-result-push.json'])
    report.check('credentials: unbound after the step', !credCtx.env.containsKey('CDLIB_REGISTRY_PASSWORD'), credCtx.env)
    emitAll('credentials', credCtx)

    List badCredentials = [
        [[[variable: 'X']], "cdlibPush: credentials[0]: expected [id: 'ID', variable: 'NAME']"],
        [[[id: 'x', variable: 'BAD-NAME']], 'cdlibPush: credentials[0]: expected'],
        [[[id: 'x', variable: 'V', type: 'ssh']], "cdlibPush: credentials[0]: type must be 'string' or 'file'"],
        [[[id: 'x', usernameVariable: 'U']], 'cdlibPush: credentials[0]: expected'],
        ['registry', 'cdlibPush: credentials: expected a list of'],
    ]
    badCredentials.eachWithIndex { List bc, int i ->
        Ctx ctx = newCtx()
        List r = runStep(ctx, 'cdlibPush', [tag: 'v1', credentials: bc[0]])
        report.check("bad credentials ${i}: fails before running anything",
                     r[1] != null && r[1].startsWith(bc[1]) && ctx.commands.isEmpty(), r[1])
    }
}

// ---- 5. parameter checks -------------------------------------------------------------------------
section('5. parameter checks') {
    List paramCases = [
        ['cdlibDeploy', [tagg: 'x'],
         "cdlibDeploy: unknown parameter 'tagg'; it takes: tag, image, lockWait, lockTtl, dryRun, file, store, credentials, resultFile"],
        ['cdlibSwitch', [tag: 'x'], "cdlibSwitch: unknown parameter 'tag'; it takes: dryRun, file, store, credentials, resultFile"],
        ['cdlibTest', [tag: 'x'], 'cdlibTest: type is required: pre-deployment, pre-integration or post-integration'],
        ['cdlibDeploy', [tag: 'x', image: 'r/i:1'], 'cdlibDeploy: give tag or image, not both'],
        ['cdlibDeploy', [lockWait: 1, 'lock-wait': 2], "cdlibDeploy: 'lock-wait' is given twice (as lockWait and as its alias)"],
        ['cdlibBuild', [tag: 'x', only: 'test'], "cdlibBuild: only must be 'service' or 'tests', got 'test'"],
        ['cdlibBuild', [only: 'Service'], "cdlibBuild: only must be 'service' or 'tests', got 'Service'"],
        ['cdlibBuild', [only: ''], "cdlibBuild: only must be 'service' or 'tests', got ''"],
        ['cdlibPush', [tag: 'x', only: 'all', credentials: [[id: 'registry', usernameVariable: 'U', passwordVariable: 'P']]],
         "cdlibPush: only must be 'service' or 'tests', got 'all'"],
        ['cdlibBuild', [tag: 'x', only: ['service', 'tests']], "cdlibBuild: only must be 'service' or 'tests', got '[service, tests]'"],
        ['cdlibDeploy', [tag: 'x', only: 'service'],
         "cdlibDeploy: unknown parameter 'only'; it takes: tag, image, lockWait, lockTtl, dryRun, file, store, credentials, resultFile"],
        ['cdlibTest', [type: 'pre-deployment', only: 'tests'],
         "cdlibTest: unknown parameter 'only'; it takes: type, tag, targetUrl, junit, noRollback, file, store, credentials, resultFile"],
        ['cdlibRollback', [to: 'r-1', previous: true], 'cdlibRollback: give to or previous, not both'],
        ['cdlibRollback', [afterFailure: true, previous: true],
         'cdlibRollback: afterFailure undoes the release this build left open; it takes no to or previous'],
        ['cdlibRollback', [tag: 'x'],
         "cdlibRollback: unknown parameter 'tag'; it takes: to, previous, lockWait, lockTtl, dryRun, file, store, credentials, resultFile"],
        ['cdlibScale', [:], "cdlibScale: replicas is required: a count N (1 to 100), or '+N' / '-N'"],
        ['cdlibScale', [replicas: 2, watch: true],
         "cdlibScale: unknown parameter 'watch'; it takes: replicas, lockWait, lockTtl, file, store, credentials, resultFile"],
        ['cdlibHeal', [replicas: 2],
         "cdlibHeal: unknown parameter 'replicas'; it takes: watch, interval, maxRounds, maxSeconds, file, store, credentials, resultFile"],
    ]
    paramCases.each { List pc ->
        Ctx ctx = newCtx()
        List r = runStep(ctx, pc[0], pc[1])
        report.equal("${pc[0]}(${pc[1]}): error", r[1], pc[2])
        report.check("${pc[0]}(${pc[1]}): nothing ran (no sh, no credentials bound)",
                     ctx.commands.isEmpty() && ctx.named('sh').isEmpty() && ctx.named('withCredentials').isEmpty(),
                     ctx.calls)
    }
}

// ---- 6. exit codes -------------------------------------------------------------------------------
section('6. exit codes') {
    Map lockHolder = [who: 'jenkins@ci', pid: 4242, build: 'jenkins-demo-41', build_url: 'http://ci/job/demo/41/', since: 1.7e9]
    List exitCases = [
        [name: 'exit 1', step: 'cdlibDeploy', params: [tag: 't'], code: 1,
         result: [service: 'demo', ok: false, exit_code: 1, message: 'demo-blue-0 did not become healthy in 30s'],
         error: 'cdlib deploy failed for demo; the release was rolled back: demo-blue-0 did not become healthy in 30s'],
        [name: 'exit 1 of a test suite', step: 'cdlibTest', params: [type: 'pre-integration'], code: 1,
         result: [service: 'demo', ok: false, exit_code: 1, message: 'demo: pre-integration tests failed (exit 3)',
                  tests: [[suite: 'pre-integration', passed: false, exit_code: 3, unstable_ok: false]]],
         error: 'cdlib test pre-integration failed for demo; the release was rolled back: demo: pre-integration tests failed (exit 3)',
         junit: 'cdlib-reports/pre-integration.xml'],
        [name: 'exit 1 of build', step: 'cdlibBuild', params: [tag: 't'], code: 1,
         result: [service: 'demo', ok: false, exit_code: 1, message: 'docker build failed: no such file app/busybox'],
         error: 'cdlib build failed for demo: docker build failed: no such file app/busybox'],
        [name: 'exit 2', step: 'cdlibSwitch', params: [:], code: 2,
         result: [service: 'demo', ok: false, exit_code: 2, message: 'switch needs an open release'],
         error: 'cdlib switch: bad input, nothing was changed: switch needs an open release'],
        [name: 'exit 2 from the argument parser (no result file)', step: 'cdlibTest', params: [type: 'smoke'], code: 2,
         result: null, error: 'cdlib test smoke: bad input, nothing was changed: no result file; see the log above',
         junit: 'cdlib-reports/smoke.xml'],
        [name: 'exit 3 with a holder record', step: 'cdlibDeploy', params: [tag: 't'], code: 3,
         result: [service: 'demo', ok: false, exit_code: 3, message: 'another release of demo is running: ...',
                  error: [type: 'LockHeld', holder: lockHolder]],
         error: 'another release of demo is running: held by jenkins@ci, pid 4242, build jenkins-demo-41, http://ci/job/demo/41/'],
        [name: 'exit 3 of a busy proxy', step: 'cdlibSwitch', params: [:], code: 3,
         result: [service: 'demo', ok: false, exit_code: 3, message: 'the proxy is busy: another proxy change runs',
                  error: [type: 'ProxyBusy', holder: lockHolder + [release: 'r-7']]],
         error: 'cdlib switch: the proxy is busy: another proxy change runs (held by jenkins@ci, pid 4242, build jenkins-demo-41, ' +
                'http://ci/job/demo/41/, release r-7)'],
        [name: 'exit 3 with the message only (no error record: the message as the CLI wrote it)', step: 'cdlibDeploy',
         params: [tag: 't'], code: 3,
         result: [service: 'demo', ok: false, exit_code: 3,
                  message: 'another release of demo is running: held by bob@host since 2024-05-01 10:00:00; build 7'],
         error: 'cdlib deploy: another release of demo is running: held by bob@host since 2024-05-01 10:00:00; build 7'],
        [name: 'exit 3 of another process driving the release', step: 'cdlibSwitch', params: [:], code: 3,
         result: [service: 'demo', ok: false, exit_code: 3, message: 'the journal of demo release r-7 was changed by another process',
                  error: [type: 'JournalConflict']],
         error: 'cdlib switch: the journal of demo release r-7 was changed by another process'],
        [name: 'exit 4', step: 'cdlibCleanup', params: [:], code: 4,
         result: [service: 'demo', ok: false, exit_code: 4, message: 'cleanup of demo failed: docker unreachable'],
         error: "cdlib cleanup failed for demo and the undo is incomplete: a person is needed (run 'cdlib status'): " +
                'cleanup of demo failed: docker unreachable'],
        [name: 'exit 127 (no CLI)', step: 'cdlibStatus', params: [:], code: 127, result: null,
         error: 'cdlib status ended with exit code 127 (not a cdlib exit code: is the CLI installed? set CDLIB_CLI): ' +
                'no result file; see the log above'],
        [name: 'exit 5', step: 'cdlibSwitch', params: [:], code: 5,
         result: [service: 'demo', ok: false, exit_code: 5, message: 'switch failed with an unexpected KeyError: x',
                  error: [type: 'KeyError', unexpected: true]],
         error: "cdlib switch failed for demo and the state is unknown; the release may still be open: run 'cdlib status', " +
                "then 'cdlib rollback' (post { failure { cdlibRollback(afterFailure: true) } } does): " +
                'switch failed with an unexpected KeyError: x'],
        [name: 'exit 5 of a verb outside a release', step: 'cdlibPush', params: [tag: 't'], code: 5,
         result: [service: 'demo', ok: false, exit_code: 5, message: 'push failed with an unexpected OSError: x'],
         error: 'cdlib push failed for demo and the state is unknown: push failed with an unexpected OSError: x'],
        [name: 'exit 137', step: 'cdlibDeploy', params: [tag: 't'], code: 137, result: null,
         error: "cdlib deploy was killed (exit 137: SIGKILL, e.g. a timeout or the out-of-memory killer); the release may " +
                "still be open: run 'cdlib status', then 'cdlib rollback' (post { failure { cdlibRollback(afterFailure: true) } } " +
                'does): no result file; see the log above'],
        [name: 'exit 143', step: 'cdlibTest', params: [type: 'post-integration'], code: 143, result: null,
         error: "cdlib test post-integration was terminated (exit 143: SIGTERM); the release may still be open: run " +
                "'cdlib status', then 'cdlib rollback' (post { failure { cdlibRollback(afterFailure: true) } } does): " +
                'no result file; see the log above',
         junit: 'cdlib-reports/post-integration.xml'],
        [name: 'exit 42', step: 'cdlibRelease', params: [tag: 't'], code: 42, result: null,
         error: "cdlib release ended with exit code 42 (not a cdlib exit code: is the CLI installed? set CDLIB_CLI); the " +
                "release may still be open: run 'cdlib status', then 'cdlib rollback' (post { failure { " +
                "cdlibRollback(afterFailure: true) } } does): no result file; see the log above",
         junit: 'cdlib-reports/*.xml'],
        [name: 'exit 1 of the pre-deployment suite', step: 'cdlibTest', params: [type: 'pre-deployment'], code: 1,
         result: [service: 'demo', ok: false, exit_code: 1, message: 'demo: pre-deployment tests failed (exit 1)'],
         error: 'cdlib test pre-deployment failed for demo: demo: pre-deployment tests failed (exit 1)',
         junit: 'cdlib-reports/pre-deployment.xml'],
        [name: 'exit 1 of a suite with noRollback', step: 'cdlibTest', params: [type: 'pre-integration', noRollback: true],
         code: 1, result: [service: 'demo', ok: false, exit_code: 1, message: 'demo: pre-integration tests failed (exit 1)'],
         error: 'cdlib test pre-integration failed for demo; the release was not rolled back and is still open: ' +
                'demo: pre-integration tests failed (exit 1)',
         junit: 'cdlib-reports/pre-integration.xml'],
        [name: 'an unstable suite', step: 'cdlibTest', params: [type: 'post-integration'], code: 0,
         result: [service: 'demo', ok: true, exit_code: 0, message: 'post-integration tests of demo failed; marked unstable',
                  tests: [[suite: 'post-integration', passed: false, exit_code: 1, unstable_ok: true]]],
         unstable: 'cdlib test post-integration: post-integration tests of demo failed; the descriptor marks them ' +
                   'unstable, so the build is UNSTABLE: post-integration tests of demo failed; marked unstable',
         junit: 'cdlib-reports/post-integration.xml'],
        [name: 'an unstable suite that exited 1', step: 'cdlibTest', params: [type: 'post-integration'], code: 1,
         result: [service: 'demo', ok: false, exit_code: 1, message: 'm',
                  tests: [[suite: 'post-integration', passed: false, exit_code: 1, unstable_ok: true]]],
         unstable: 'cdlib test post-integration: post-integration tests of demo failed; the descriptor marks them ' +
                   'unstable, so the build is UNSTABLE: m',
         junit: 'cdlib-reports/post-integration.xml'],
        [name: 'release with an unstable suite', step: 'cdlibRelease', params: [tag: 't'], code: 0,
         result: [service: 'demo', ok: true, exit_code: 0, message: 'released',
                  tests: [[suite: 'pre-integration', passed: true, unstable_ok: false],
                          [suite: 'post-integration', passed: false, unstable_ok: true]]],
         unstable: 'cdlib release: post-integration tests of demo failed; the descriptor marks them unstable, ' +
                   'so the build is UNSTABLE: released',
         junit: 'cdlib-reports/*.xml'],
        [name: 'a failed release is not unstable', step: 'cdlibRelease', params: [tag: 't'], code: 1,
         result: [service: 'demo', ok: false, exit_code: 1, message: 'switch failed: nginx -t failed',
                  tests: [[suite: 'pre-integration', passed: false, unstable_ok: true]]],
         error: 'cdlib release failed for demo; the release was rolled back: switch failed: nginx -t failed',
         junit: 'cdlib-reports/*.xml'],
        [name: 'a skipped suite is not a failure', step: 'cdlibTest', params: [type: 'pre-deployment'], code: 0,
         result: [service: 'demo', ok: true, exit_code: 0, message: 'no pre-deployment suite',
                  tests: [[suite: 'pre-deployment', passed: false, skipped: true, unstable_ok: false]]],
         junit: 'cdlib-reports/pre-deployment.xml'],
    ]
    exitCases.each { Map c ->
        Ctx ctx = newCtx(cli: fixedCli(c.code, c.result))
        List r = runStep(ctx, c.step, c.params)
        report.equal("${c.name}: error", r[1], c.error)
        report.equal("${c.name}: unstable", ctx.named('unstable').collect { it.args }, c.unstable ? [c.unstable] : [])
        report.equal("${c.name}: CDLIB_LAST_EXIT_CODE", ctx.env.CDLIB_LAST_EXIT_CODE, String.valueOf(c.code))
        List order = ctx.calls.findAll { it.name in ['junit', 'error'] }.collect { it.name }
        report.equal("${c.name}: JUnit published before the verdict",
                     order, (c.junit ? ['junit'] : []) + (c.error ? ['error'] : []))
        if (c.junit) {
            report.equal("${c.name}: JUnit path", ctx.named('junit')[0].args,
                         [allowEmptyResults: true, testResults: c.junit])
        }
        report.check("${c.name}: reads the result only when it exists",
                     ctx.named('readJSON').size() == (c.result == null ? 0 : 1), ctx.named('readJSON'))
        if (!c.error) {
            report.equal("${c.name}: returns the result", r[0], c.result)
        }
        emitAll(c.name, ctx)
    }
}

// ---- 7. which release this build holds open ------------------------------------------------------
section('7. which release') {
    // [step, params, exit code] in order; 'abort' stands for a step Jenkins aborted (sh throws)
    Closure runAll = { List sequence ->
        Ctx ctx = newCtx()
        sequence.each { List s ->
            ctx.cli = s[2] == 'abort' ? { List argv -> throw new StepFailed('Timeout has been exceeded') }
                                      : fixedCli(s[2], [service: 'demo', ok: s[2] == 0, exit_code: s[2], message: 'x'])
            runStep(ctx, s[0], s[1])
        }
        return ctx
    }
    Closure openAfter = { List sequence -> runAll(sequence).env.CDLIB_RELEASE_OPEN }
    report.equal('release open after deploy', openAfter([['cdlibDeploy', [tag: 't'], 0]]), 'true')
    report.equal('release open after deploy, switch exit 2',
                 openAfter([['cdlibDeploy', [tag: 't'], 0], ['cdlibSwitch', [:], 2]]), 'true')
    report.equal('release closed after a step that rolled back (exit 1)',
                 openAfter([['cdlibDeploy', [tag: 't'], 0], ['cdlibTest', [type: 'pre-integration'], 1]]), 'false')
    report.equal('release closed after cleanup', openAfter([['cdlibDeploy', [tag: 't'], 0], ['cdlibCleanup', [:], 0]]), 'false')
    report.equal('no release after a failed build', openAfter([['cdlibBuild', [tag: 't'], 2]]), 'false')
    report.equal('no release after deploy exit 3', openAfter([['cdlibDeploy', [tag: 't'], 3]]), 'false')
    report.equal('no release after deploy exit 2', openAfter([['cdlibDeploy', [tag: 't'], 2]]), 'false')
    report.equal('release closed after release exit 1', openAfter([['cdlibRelease', [tag: 't'], 1]]), 'false')
    report.equal('no release open after a scale that ended', openAfter([['cdlibScale', [replicas: '+2'], 0]]), 'false')
    report.equal('no release open after a scale that rolled back', openAfter([['cdlibScale', [replicas: 3], 1]]), 'false')
    report.equal('no release open after a refused scale', openAfter([['cdlibScale', [replicas: 0], 2]]), 'false')
    report.equal('a failed status does not close the release (exit 1 of a verb outside releases)',
                 openAfter([['cdlibDeploy', [tag: 't'], 0], ['cdlibStatus', [:], 1]]), 'true')
    report.equal('a failed pre-deployment suite does not close the release',
                 openAfter([['cdlibDeploy', [tag: 't'], 0], ['cdlibTest', [type: 'pre-deployment'], 1]]), 'true')
    report.equal('a suite with noRollback that exits 1 leaves the release open',
                 openAfter([['cdlibDeploy', [tag: 't'], 0], ['cdlibTest', [type: 'pre-integration', noRollback: true], 1]]), 'true')
    report.equal('cleanup exit 4 leaves the release open',
                 openAfter([['cdlibDeploy', [tag: 't'], 0], ['cdlibCleanup', [:], 4]]), 'true')
    report.equal('a failed build leaves no release (exit 5 of a verb outside releases)',
                 openAfter([['cdlibBuild', [tag: 't'], 5]]), 'false')
    // unknown outcomes: the release may be open (exit 5: state unknown, 137: killed, 143: terminated, 42: not cdlib's)
    [5, 137, 143, 42, 'abort'].each { Object code ->
        report.equal("release may be open after deploy exits ${code}", openAfter([['cdlibDeploy', [tag: 't'], code]]), 'true')
        report.equal("release may be open after release exits ${code}", openAfter([['cdlibRelease', [tag: 't'], code]]), 'true')
        report.equal("a scale may be open after it exits ${code}", openAfter([['cdlibScale', [replicas: '-1'], code]]), 'true')
        [['cdlibSwitch', [:]], ['cdlibTest', [type: 'pre-integration']], ['cdlibTest', [type: 'post-integration']],
         ['cdlibCleanup', [:]]].each { List step ->
            report.equal("release stays open after deploy, then ${step[0]}${step[1].type ? ' ' + step[1].type : ''} exits ${code}",
                         openAfter([['cdlibDeploy', [tag: 't'], 0], [step[0], step[1], code]]), 'true')
        }
        report.equal("release may be open after rollback exits ${code}",
                     openAfter([['cdlibDeploy', [tag: 't'], 0], ['cdlibRollback', [:], code]]), 'true')
        // and post { failure { cdlibRollback(afterFailure: true) } } then runs the rollback
        Ctx ctx = runAll([['cdlibDeploy', [tag: 't'], 0], ['cdlibSwitch', [:], code], ['cdlibRollback', [afterFailure: true], 0]])
        report.equal("rollback after failure runs after switch exits ${code}", ctx.verbs(), ['deploy', 'switch', 'rollback'])
        report.equal("rollback after failure closes the release after switch exits ${code}", ctx.env.CDLIB_RELEASE_OPEN, 'false')
        ctx = runAll([['cdlibDeploy', [tag: 't'], code], ['cdlibRollback', [afterFailure: true], 0]])
        report.equal("rollback after failure runs after deploy exits ${code}", ctx.verbs(), ['deploy', 'rollback'])
        report.check("rollback after failure after deploy exits ${code}: says why",
                     ctx.named('echo').any { it.args.startsWith('cdlib rollback: the last cdlib step ended with exit code ') },
                     ctx.named('echo'))
    }
    // a dry run changes nothing, so it never changes what this build holds open
    report.equal('a dry-run deploy opens no release', openAfter([['cdlibDeploy', [tag: 't', dryRun: true], 0]]), 'false')
    report.equal('a dry-run cleanup closes no release',
                 openAfter([['cdlibDeploy', [tag: 't'], 0], ['cdlibCleanup', [dryRun: true], 0]]), 'true')
    report.equal('a dry-run release that fails leaves nothing open',
                 openAfter([['cdlibRelease', [tag: 't', dryRun: true], 5]]), 'false')
    // exit 3 of a deploy: another build's release holds the lock, nothing of this build is open
    Ctx locked = runAll([['cdlibDeploy', [tag: 't'], 3], ['cdlibRollback', [afterFailure: true], 0]])
    report.equal('rollback after failure does not run after deploy exits 3', locked.verbs(), ['deploy'])
    // exit 3 of a switch: the proxy stayed busy, this build's release is still deployed
    Ctx busy = runAll([['cdlibDeploy', [tag: 't'], 0], ['cdlibSwitch', [:], 3], ['cdlibRollback', [afterFailure: true], 0]])
    report.equal('rollback after failure runs after switch exits 3', busy.verbs(), ['deploy', 'switch', 'rollback'])
    Ctx aborted = runAll([['cdlibDeploy', [tag: 't'], 'abort']])
    report.equal('an aborted deploy leaves CDLIB_LAST_EXIT_CODE empty', aborted.env.CDLIB_LAST_EXIT_CODE, '')

    List afterFailureCases = [
        [name: 'no open release', env: [:], runs: false, echo: 'cdlib rollback: skipped, this build left no open release'],
        [name: 'open release, last exit 2', env: [CDLIB_RELEASE_OPEN: 'true', CDLIB_LAST_EXIT_CODE: '2'], runs: true],
        [name: 'open release, step killed', env: [CDLIB_RELEASE_OPEN: 'true', CDLIB_LAST_EXIT_CODE: ''], runs: true],
        [name: 'open release, state unknown', env: [CDLIB_RELEASE_OPEN: 'true', CDLIB_LAST_EXIT_CODE: '5'], runs: true,
         echo: 'cdlib rollback: the last cdlib step ended with exit code 5; this build\'s release may still be open'],
        [name: 'open release, CLI killed', env: [CDLIB_RELEASE_OPEN: 'true', CDLIB_LAST_EXIT_CODE: '137'], runs: true],
        [name: 'open release, CLI terminated', env: [CDLIB_RELEASE_OPEN: 'true', CDLIB_LAST_EXIT_CODE: '143'], runs: true],
        [name: 'open release, unknown exit code', env: [CDLIB_RELEASE_OPEN: 'true', CDLIB_LAST_EXIT_CODE: '42'], runs: true],
        [name: 'open release, a later stage found the proxy busy', env: [CDLIB_RELEASE_OPEN: 'true', CDLIB_LAST_EXIT_CODE: '3'],
         runs: true, echo: 'cdlib rollback: the last cdlib step ended with exit code 3'],
        [name: 'open release, undo incomplete', env: [CDLIB_RELEASE_OPEN: 'true', CDLIB_LAST_EXIT_CODE: '4'], runs: false,
         echo: 'cdlib rollback: skipped after exit code 4: the undo is incomplete'],
        [name: 'rolled back already', env: [CDLIB_RELEASE_OPEN: 'false', CDLIB_LAST_EXIT_CODE: '1'], runs: false,
         echo: 'cdlib rollback: skipped, this build left no open release'],
    ]
    afterFailureCases.each { Map c ->
        Ctx ctx = newCtx(env: c.env)
        List r = runStep(ctx, 'cdlibRollback', [afterFailure: true, file: 'cdlib.yml'])
        report.check("rollback after failure, ${c.name}: no error", r[1] == null, r[1])
        report.equal("rollback after failure, ${c.name}: runs the CLI", ctx.commands.collect { it.argv },
                     c.runs ? [['rollback', '--file', 'cdlib.yml', '--result-file', 'cdlib-result-rollback.json']] : [])
        if (c.echo) {
            report.check("rollback after failure, ${c.name}: says why",
                         ctx.named('echo').any { it.args.startsWith(c.echo) }, ctx.named('echo'))
        }
        emitAll("rollback after failure, ${c.name}", ctx)
    }
}

// ---- 8. cdlibPipeline -----------------------------------------------------------------------------
section('8. cdlibPipeline') {
    Ctx pctx = newCtx(env: [GIT_COMMIT: '0123456789abcdef0123456789abcdef01234567'])
    List pr = runStep(pctx, 'cdlibPipeline', [file: 'svc.yml', lockWait: 120, timeouts: [deploy: 40],
                                               credentials: [[id: 'reg', usernameVariable: 'U', passwordVariable: 'P']]])
    report.check('cdlibPipeline: succeeds', pr[1] == null, pr[1])
    report.equal('cdlibPipeline: stages in order', pctx.named('stage').collect { it.args }, pipelineStages)
    report.equal('cdlibPipeline: the stages of the stage table', pctx.named('stage').collect { it.args }, stagesClass.names())
    report.equal('cdlibPipeline: the default timeouts of the stage table', runStep(newCtx(env: [GIT_COMMIT: 'abc']),
                 'cdlibPipeline', [tag: 't'])[1] == null ? stagesClass.minutes([:]) : null,
                 ['pre-deployment tests': 20, 'build': 30, 'push': 15, 'deploy': 15, 'pre-integration tests': 20,
                  'switch': 5, 'post-integration tests': 20, 'cleanup': 10, 'rollback': 15])
    report.equal('cdlibPipeline: verbs in order', pctx.verbs(), pipelineVerbs)
    report.equal('cdlibPipeline: tag from GIT_COMMIT', pctx.commands.collect { it.argv.contains('--tag') ? it.argv[it.argv.indexOf('--tag') + 1] : null }.unique() - [null],
                 ['0123456789ab'])
    report.equal('cdlibPipeline: a timeout per stage', pctx.named('timeout').collect { it.args.time },
                 [20, 30, 15, 40, 20, 5, 20, 10])
    report.equal('cdlibPipeline: the test images are built first, in the pre-deployment stage',
                 pctx.calls.findAll { it.name == 'stage' || it.name == 'sh' }.take(4).collect { it.name == 'stage' ? it.args : it.args.label },
                 ['pre-deployment tests', 'cdlib build', 'cdlib test pre-deployment', 'build'])
    report.equal('cdlibPipeline: build of the test images', pctx.commands[0].argv,
                 ['build', '--file', 'svc.yml', '--tag', '0123456789ab', '--only', 'tests', '--result-file',
                  'cdlib-result-build-tests.json'])
    report.equal('cdlibPipeline: build of the service image', pctx.commands[2].argv,
                 ['build', '--file', 'svc.yml', '--tag', '0123456789ab', '--only', 'service', '--result-file',
                  'cdlib-result-build-service.json'])
    report.equal('cdlibPipeline: push of both images', pctx.commands[3].argv,
                 ['push', '--file', 'svc.yml', '--tag', '0123456789ab', '--result-file', 'cdlib-result-push.json'])
    report.equal('cdlibPipeline: deploy argument list', pctx.commands[4].argv,
                 ['deploy', '--file', 'svc.yml', '--tag', '0123456789ab', '--lock-wait', '120', '--result-file', 'cdlib-result-deploy.json'])
    report.equal('cdlibPipeline: credentials for the builds, push and deploy only',
                 pctx.commands.collect { it.env.containsKey('P') }, [true, false, true, true, true, false, false, false, false])
    emitAll('cdlibPipeline', pctx)

    [['switch', 2, true], ['test pre-integration', 1, false], ['deploy', 3, false], ['build tests', 1, false],
     ['test pre-deployment', 1, false], ['build service', 2, false], ['cleanup', 4, false], ['deploy', 5, true],
     ['switch', 143, true], ['build service', 5, false]].each { List f ->
        Ctx ctx = newCtx(env: [GIT_COMMIT: 'fedcba9876543210fedcba9876543210fedcba98'], cli: failingAt(f[0], f[1]))
        List r = runStep(ctx, 'cdlibPipeline', [:])
        report.check("cdlibPipeline, ${f[0]} exits ${f[1]}: fails", r[1] != null, r)
        List verbs = ctx.verbs()
        int at = pipelineVerbs.indexOf(f[0])
        report.equal("cdlibPipeline, ${f[0]} exits ${f[1]}: stops there and ${f[2] ? 'rolls back' : 'does not roll back'}",
                     verbs, pipelineVerbs.subList(0, at + 1) + (f[2] ? ['rollback'] : []))
        report.equal("cdlibPipeline, ${f[0]} exits ${f[1]}: a rollback stage runs",
                     ctx.named('stage').collect { it.args }.last(), 'rollback')
        emitAll("cdlibPipeline, ${f[0]} exits ${f[1]}", ctx)
    }
    Ctx noTag = newCtx()
    List nt = runStep(noTag, 'cdlibPipeline', [:])
    report.check('cdlibPipeline: without a tag or GIT_COMMIT it fails before any stage',
                 nt[1]?.startsWith('cdlibPipeline: no tag') && noTag.named('stage').isEmpty(), nt[1])
    Ctx badTimeouts = newCtx(env: [GIT_COMMIT: '0123456789abcdef'])
    report.equal('cdlibPipeline: an unknown stage in timeouts', runStep(badTimeouts, 'cdlibPipeline', [timeouts: [deploi: 3]])[1],
                 "cdlibPipeline: timeouts: unknown stage 'deploi'; stages: pre-deployment, build, push, deploy, " +
                 'pre-integration, switch, post-integration, cleanup, rollback')
    report.equal('cdlibPipeline: an unknown parameter', runStep(newCtx(), 'cdlibPipeline', [tags: 'x'])[1],
                 "cdlibPipeline: unknown parameter 'tags'; it takes: file, store, tag, credentials, lockWait, lockTtl, timeouts")
}

// ---- 9. the Jenkinsfile: cdlibPipeline in a node ---------------------------------------------------
/** Runs the Jenkinsfile in a recorded run; returns the failure message, or null. */
Closure runJenkinsfile = { Ctx ctx ->
    Script s = jenkinsfileClass.newInstance()
    s.binding = ctx.binding
    try {
        s.run()
        return null
    } catch (StepFailed e) {
        return e.message
    }
}

/** The cdlib verbs each stage ran, by stage name (from the sh labels). */
Closure verbsByStage = { Ctx ctx ->
    Map out = [:]
    String current = null
    ctx.calls.each { c ->
        if (c.name == 'stage') {
            current = c.args
            out[current] = out[current] ?: []
        } else if (c.name == 'sh' && String.valueOf(c.args.label).startsWith('cdlib ') && current) {
            out[current] << String.valueOf(c.args.label).substring('cdlib '.length())
        }
    }
    return out
}

if (jenkinsfileClass != null) {
    section('9. the Jenkinsfile') {
        String commit = '9f8e7d6c5b4a39281706f5e4d3c2b1a098765432'
        String tag = commit.substring(0, 12)
        Ctx jctx = newCtx(commit: commit, stubs: true)
        String failed = runJenkinsfile(jctx)
        report.check('Jenkinsfile (stubs): no failure', failed == null, failed)
        report.equal('Jenkinsfile: a node, the checkout, the demo\'s prepare.sh, cdlibPipeline, then the archive',
                     jctx.calls.findAll { it.name in ['node', 'checkout', 'sh', 'cdlibPipeline', 'archiveArtifacts'] }.collect {
                         it.name == 'sh' ? it.args.script : it.name },
                     ['node', 'checkout', 'examples/demo/prepare.sh', 'cdlibPipeline', 'archiveArtifacts'])
        report.equal('Jenkinsfile: cdlibPipeline with the demo descriptor, the commit tag and LOCK_WAIT',
                     jctx.named('cdlibPipeline').collect { it.args },
                     [[file: 'examples/demo/cdlib.yml', tag: tag, lockWait: '300', credentials: []]])
        report.check('Jenkinsfile: declares no job properties (they come from the job catalog)',
                     jctx.named('properties').isEmpty(), jctx.named('properties'))
        Ctx cctx = newCtx(commit: commit, stubs: true, env: [CDLIB_REGISTRY_CREDENTIALS: 'registry-login'])
        runJenkinsfile(cctx)
        report.equal('Jenkinsfile: the registry credentials from CDLIB_REGISTRY_CREDENTIALS',
                     cctx.named('cdlibPipeline').collect { it.args.credentials },
                     [[[id: 'registry-login', usernameVariable: 'CDLIB_REGISTRY_USER',
                        passwordVariable: 'CDLIB_REGISTRY_PASSWORD']]])
        Ctx noCommit = newCtx(stubs: true)
        String noCommitError = runJenkinsfile(noCommit)
        report.check('Jenkinsfile: without GIT_COMMIT it fails with a hint',
                     noCommitError?.startsWith('GIT_COMMIT is not set') && noCommit.named('cdlibPipeline').isEmpty(),
                     noCommitError)

        // the same Jenkinsfile with the real library: the stages, the CLI calls and the rollback decisions
        Closure endToEnd = { Closure cli, Map params = [:] ->
            Ctx ctx = newCtx(commit: commit, cli: cli, params: params)
            String failure = runJenkinsfile(ctx)
            return [ctx, failure]
        }
        List ok = endToEnd(failingAt('none', 0))
        report.check('Jenkinsfile (library): no failure', ok[1] == null, ok[1])
        List stageNames = ok[0].named('stage').collect { it.args }
        report.equal('Jenkinsfile (library): the stages of the stage table, in order', stageNames, stagesClass.names())
        report.equal('Jenkinsfile (library): the product order of the stages', stageNames, pipelineStages)
        List afterStage = []
        ok[0].calls.eachWithIndex { Map c, int i ->
            if (c.name == 'stage') {
                afterStage << ok[0].calls[i + 1]
            }
        }
        report.check('Jenkinsfile (library): every stage runs under a timeout in minutes',
                     afterStage.every { it?.name == 'timeout' && it.args.time > 0 && it.args.unit == 'MINUTES' },
                     afterStage)
        report.equal('Jenkinsfile (library): the timeouts of the stage table', afterStage.collect { it?.args?.time },
                     stagesClass.table().findAll { it[0] != 'rollback' }.collect { it[2] })
        report.equal('Jenkinsfile (library): the cdlib verbs of each stage', verbsByStage(ok[0]), [
            'pre-deployment tests': ['build', 'test pre-deployment'], 'build': ['build'], 'push': ['push'],
            'deploy': ['deploy'], 'pre-integration tests': ['test pre-integration'], 'switch': ['switch'],
            'post-integration tests': ['test post-integration'], 'cleanup': ['cleanup']])
        report.equal('Jenkinsfile (library): CLI verbs in order', ok[0].verbs(), pipelineVerbs)
        report.equal('Jenkinsfile (library): build argument lists',
                     ok[0].commands.findAll { it.argv[0] == 'build' }.collect { it.argv },
                     [['build', '--file', 'examples/demo/cdlib.yml', '--tag', tag, '--only', 'tests',
                       '--result-file', 'cdlib-result-build-tests.json'],
                      ['build', '--file', 'examples/demo/cdlib.yml', '--tag', tag, '--only', 'service',
                       '--result-file', 'cdlib-result-build-service.json']])
        report.equal('Jenkinsfile (library): deploy argument list', ok[0].commands.find { it.argv[0] == 'deploy' }?.argv,
                     ['deploy', '--file', 'examples/demo/cdlib.yml', '--tag', tag, '--lock-wait', '300',
                      '--result-file', 'cdlib-result-deploy.json'])
        report.equal('Jenkinsfile (library): prepare.sh runs first, before the first build',
                     ok[0].calls.findAll { it.name in ['stage', 'sh'] }.take(3).collect {
                         it.name == 'stage' ? it.args : it.args.label ?: it.args.script },
                     ['examples/demo/prepare.sh', 'pre-deployment tests', 'cdlib build'])
        List withParam = endToEnd(failingAt('none', 0), [LOCK_WAIT: '45'])
        report.equal('Jenkinsfile (library): the LOCK_WAIT job parameter',
                     withParam[0].commands.find { it.argv[0] == 'deploy' }?.argv?.getAt(6), '45')
        report.check('Jenkinsfile (library): archives the results',
                     ok[0].named('archiveArtifacts').any { it.args.artifacts == 'cdlib-result-*.json' },
                     ok[0].named('archiveArtifacts'))
        emitAll('Jenkinsfile', ok[0])
        [['switch', 2, true], ['test post-integration', 1, false], ['deploy', 3, false], ['push', 2, false],
         ['build tests', 1, false], ['test pre-deployment', 1, false], ['build service', 1, false],
         ['cleanup', 4, false], ['switch', 5, true], ['deploy', 137, true], ['test post-integration', 143, true],
         ['cleanup', 42, true], ['push', 5, false], ['test pre-deployment', 5, false]].each { List f ->
            List run = endToEnd(failingAt(f[0], f[1]))
            int at = pipelineVerbs.indexOf(f[0])
            String name = "Jenkinsfile (library), ${f[0]} exits ${f[1]}"
            report.check("${name}: the build fails", run[1] != null, run[1])
            report.equal("${name}: ${f[2] ? 'rolls back' : 'no rollback'}",
                         run[0].verbs(), pipelineVerbs.subList(0, at + 1) + (f[2] ? ['rollback'] : []))
            report.equal("${name}: a rollback stage runs", run[0].named('stage').collect { it.args }.last(), 'rollback')
            // the result files are archived after every cdlib step ran, the rollback's included
            int archived = run[0].calls.findIndexOf { it.name == 'archiveArtifacts' }
            int lastCli = run[0].calls.findLastIndexOf { it.name == 'sh' && String.valueOf(it.args.label).startsWith('cdlib ') }
            report.check("${name}: archives the results after the last cdlib step",
                         archived > lastCli && lastCli >= 0, "archiveArtifacts at ${archived}, last cdlib step at ${lastCli}")
            emitAll("Jenkinsfile, ${f[0]} exits ${f[1]}", run[0])
        }
    }
}

// ---- 10. results the real CLI wrote ----------------------------------------------------------------
section('10. results the real CLI wrote') {
    report.check('CLI results: a directory of results from cdlib.cli.main (--cli-results DIR)',
                 cliResults != null && cliResults.isDirectory(), "${cliResults}: run through tests/contract/test_groovy_steps.py")
    Closure fromCli = { String name ->
        File f = new File(cliResults, name)
        return f.isFile() ? new groovy.json.JsonSlurper().parse(f) : null
    }
    Map locked = cliResults ? fromCli('lock-held.json') : null
    report.check('CLI results: lock-held.json', locked != null, 'missing')
    if (locked) {
        Ctx ctx = newCtx(cli: fixedCli(locked.exit_code as int, locked))
        List r = runStep(ctx, 'cdlibDeploy', [tag: 't'])
        Map h = locked.error?.holder ?: [:]
        report.equal('CLI lock-held result: exit code 3', locked.exit_code, 3)
        report.equal('CLI lock-held result: the message names the holder from error.holder', r[1],
                     "another release of shop is running: held by ${h.who}, pid ${h.pid}, build jenkins-shop-41, ".toString() +
                     'http://ci.example/job/shop/41/, release r-9')
        report.check('CLI lock-held result: the holder is not a top-level key', !locked.containsKey('holder'), locked.keySet())
        report.equal('CLI lock-held result: no release of this build is open', ctx.env.CDLIB_RELEASE_OPEN, 'false')
        runStep(ctx, 'cdlibRollback', [afterFailure: true])
        report.equal('CLI lock-held result: the post-failure rollback leaves the other release alone',
                     ctx.verbs(), ['deploy'])
        emitAll('CLI lock-held result', ctx)
    }
    Map unknown = cliResults ? fromCli('unknown.json') : null
    report.check('CLI results: unknown.json', unknown != null, 'missing')
    if (unknown) {
        Ctx ctx = newCtx(env: [CDLIB_RELEASE_OPEN: 'true'], cli: fixedCli(unknown.exit_code as int, unknown))
        List r = runStep(ctx, 'cdlibSwitch', [:])
        report.equal('CLI unknown result: exit code 5 with error.type', [unknown.exit_code, unknown.error?.type],
                     [5, 'RuntimeError'])
        report.check('CLI unknown result: the state is unknown and the release may be open',
                     r[1]?.startsWith('cdlib switch failed for shop and the state is unknown; the release may still be open: ' +
                                      "run 'cdlib status', then 'cdlib rollback'"), r[1])
        report.equal('CLI unknown result: CDLIB_RELEASE_OPEN', ctx.env.CDLIB_RELEASE_OPEN, 'true')
        ctx.cli = fixedCli(0, [service: 'shop', ok: true, exit_code: 0, message: 'rolled back'])
        runStep(ctx, 'cdlibRollback', [afterFailure: true])
        report.equal('CLI unknown result: the post-failure rollback runs', ctx.verbs(), ['switch', 'rollback'])
        emitAll('CLI unknown result', ctx)
    }
    Map bad = cliResults ? fromCli('bad-input.json') : null
    report.check('CLI results: bad-input.json', bad != null, 'missing')
    if (bad) {
        Ctx ctx = newCtx(cli: fixedCli(bad.exit_code as int, bad))
        List r = runStep(ctx, 'cdlibDeploy', [tag: 't'])
        report.equal('CLI bad-input result: exit code 2', bad.exit_code, 2)
        report.equal('CLI bad-input result: the message', r[1], "cdlib deploy: bad input, nothing was changed: ${bad.message}".toString())
        report.equal('CLI bad-input result: no release open', ctx.env.CDLIB_RELEASE_OPEN, 'false')
        emitAll('CLI bad-input result', ctx)
    }
}

// ---- summary ---------------------------------------------------------------------------------------
if (emit) {
    new File(emit).text = JsonOutput.prettyPrint(JsonOutput.toJson(report.emitted))
}
// the variants: the same checks against other copies of the library, in this JVM (one start for all)
File self = new File(getClass().protectionDomain.codeSource.location.path)
variants.each { String name, String dir ->
    Binding variantBinding = new Binding()
    variantBinding.setVariable('embedded', true)
    List variantArgs = ['--root', dir, '--label', name] + (cliResults ? ['--cli-results', cliResults.path] : [])
    new GroovyShell(variantBinding).run(self, variantArgs as String[])
}
println "${report.prefix}${report.passed} passed, ${report.failed} failed"
if (binding.hasVariable('embedded')) {
    return report.failed
}
System.exit(report.failed ? 1 : 0)
