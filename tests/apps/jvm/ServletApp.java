// The servlet flavour of VulnApp: one jakarta HttpServlet in an embedded Tomcat, on loopback.
//
//   javac -cp tomcat-embed-core.jar:tomcat-annotations-api.jar -d build/tests/jvm ServletApp.java
//   java -cp build/tests/jvm:<same jars> ServletApp        -> prints "ready <port>"
//
// /exec?cmd=... runs a command; 403 "blocked: <message>" when the probe refused it.

import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Arrays;

import org.apache.catalina.Context;
import org.apache.catalina.connector.Connector;
import org.apache.catalina.startup.Tomcat;

public class ServletApp {
    public static class ExecServlet extends HttpServlet {
        @Override
        protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws java.io.IOException {
            int code = 200;
            String body;
            try {
                Process p = new ProcessBuilder(Arrays.asList(req.getParameter("cmd").split(" ")))
                        .redirectErrorStream(true).start();
                body = new String(readAll(p.getInputStream()), StandardCharsets.UTF_8);
                p.waitFor();
            } catch (SecurityException e) {
                code = 403;
                body = "blocked: " + e.getMessage();
            } catch (Exception e) {
                code = 500;
                body = "error: " + e;
            }
            resp.setStatus(code);
            resp.getOutputStream().write(body.getBytes(StandardCharsets.UTF_8));
        }
    }

    public static void main(String[] args) throws Exception {
        File base = Files.createTempDirectory("servletapp-").toFile();
        base.deleteOnExit();
        Tomcat tomcat = new Tomcat();
        tomcat.setBaseDir(base.getAbsolutePath());
        Connector connector = new Connector();
        connector.setPort(0);
        connector.setProperty("address", "127.0.0.1");
        tomcat.setConnector(connector);
        Context ctx = tomcat.addContext("", base.getAbsolutePath());
        Tomcat.addServlet(ctx, "exec", new ExecServlet());
        ctx.addServletMappingDecoded("/exec", "exec");
        tomcat.start();
        System.out.println("ready " + connector.getLocalPort());
        System.out.flush();
        tomcat.getServer().await();
    }

    static byte[] readAll(InputStream in) throws java.io.IOException {
        ByteArrayOutputStream b = new ByteArrayOutputStream();
        byte[] buf = new byte[8192];
        int n;
        while ((n = in.read(buf)) > 0) b.write(buf, 0, n);
        return b.toByteArray();
    }
}
