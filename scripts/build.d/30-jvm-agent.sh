#!/usr/bin/env bash
# Builds the JVM probe (one shaded jar, ASM relocated) and publishes it as
# build/jvm/rampart-jvm-agent.jar, the path attachers and -javaagent use.
# A no-op when the published jar is newer than every source file and the pom.
#
# Published by copy + rename, never rewritten in place: running JVMs map the jar (the
# bootstrap class path and the agent's loader read it lazily), and a jar rewritten under a
# JVM crashes it with SIGBUS in libzip. A rename gives the new jar a new inode; JVMs that
# loaded the old one keep reading it.
set -euo pipefail
cd "$(dirname "$0")/../.."
published=build/jvm/rampart-jvm-agent.jar
built=rasp/jvm/target/rampart-jvm-agent.jar
if [ -f "$published" ] && [ -f rasp/jvm/target/test-apps-lib/tomcat-embed-core.jar ] &&
   [ -z "$(find rasp/jvm/pom.xml rasp/jvm/src -newer "$published" -print -quit)" ]; then
  exit 0
fi
# The first build downloads ASM and the Maven plugins into ~/.m2 (Maven Central).
(cd rasp/jvm && mvn -q -B -Dstyle.color=never package -DskipTests)
test -f "$built" && test -f rasp/jvm/target/test-apps-lib/tomcat-embed-core.jar
bash scripts/publish-file.sh "$built" "$published"  # copy + rename (see above)
