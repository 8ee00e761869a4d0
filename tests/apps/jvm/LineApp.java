// A JVM app driven by lines on stdin, for JDKs without the JDK HTTP server (the JDK 11
// runtime the FIFO-route test uses has no jdk.httpserver). Java 8 source; compile with
// `javac --release 8`. One command per line, one answer line each:
//
//   exec CMD ARGS...   -> "exec <exit code>" or "blocked <message>" (the probe's SecurityException)
//   read PATH          -> "read ok" or "blocked <message>"
//   version            -> the JVM's java.version

import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.util.Arrays;

public class LineApp {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        System.out.println("ready");
        System.out.flush();
        String line;
        while ((line = in.readLine()) != null) {
            String[] words = line.trim().split(" ");
            String answer;
            try {
                if (words[0].equals("exec")) {
                    Process p = new ProcessBuilder(Arrays.copyOfRange(words, 1, words.length)).start();
                    answer = "exec " + p.waitFor();
                } else if (words[0].equals("read")) {
                    new FileInputStream(words[1]).close();
                    answer = "read ok";
                } else if (words[0].equals("version")) {
                    answer = System.getProperty("java.version");
                } else {
                    answer = "unknown " + words[0];
                }
            } catch (SecurityException e) {
                answer = "blocked " + e.getMessage();
            }
            System.out.println(answer);
            System.out.flush();
        }
    }
}
