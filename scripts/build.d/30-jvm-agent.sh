#!/usr/bin/env bash
# Builds the JVM probe: rasp/jvm/target/rampart-jvm-agent.jar (one shaded jar, ASM relocated).
# A no-op when the jar is newer than every source file and the pom.
set -euo pipefail
cd "$(dirname "$0")/../../rasp/jvm"
jar=target/rampart-jvm-agent.jar
if [ -f "$jar" ] && [ -f target/test-apps-lib/tomcat-embed-core.jar ] && [ -z "$(find pom.xml src -newer "$jar" -print -quit)" ]; then
  exit 0
fi
# The first build downloads ASM and the Maven plugins into ~/.m2 (Maven Central).
mvn -q -B -Dstyle.color=never package -DskipTests
test -f "$jar" && test -f target/test-apps-lib/tomcat-embed-core.jar
