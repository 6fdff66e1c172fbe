/*
 * A client of the Counters test service written with Apache Thrift's Java library, as its users write one.
 *
 * Compiled with the Apache compiler's code for counters.thrift (`thrift -r --gen java`) against libthrift's jar,
 * run as `java ApacheJavaClient PORT NAME`. For each way a Java service may speak (TSocket plain or under
 * TFramedTransport, binary or compact, directly or through TMultiplexedProtocol), it calls ping, add, get, get
 * of a missing counter and, last, an add over the server's maximum message size (70 kB) on one connection, and
 * prints what came back as one JSON object, by combination.
 */

import java.util.LinkedHashMap;
import java.util.Map;
import org.apache.thrift.TApplicationException;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.protocol.TCompactProtocol;
import org.apache.thrift.protocol.TMultiplexedProtocol;
import org.apache.thrift.protocol.TProtocol;
import org.apache.thrift.transport.TSocket;
import org.apache.thrift.transport.TTransport;
import org.apache.thrift.transport.layered.TFramedTransport;

public final class ApacheJavaClient {
    private static final int TIMEOUT_MS = 10_000;

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        String name = args[1];
        StringBuilder json = new StringBuilder("{");
        for (String transport : new String[] {"plain", "framed"}) {
            for (String protocol : new String[] {"binary", "compact"}) {
                for (String service : new String[] {"", "Counters"}) {
                    String combination = transport + " " + protocol + (service.isEmpty() ? "" : " multiplexed");
                    String counter = name + "-" + combination.replace(' ', '-');
                    String results;
                    try {
                        results = toJson(calls(port, transport, protocol, service, counter));
                    } catch (Exception error) {
                        results = quote(error.toString());
                    }
                    json.append(json.length() > 1 ? ", " : "").append(quote(combination)).append(": ").append(results);
                }
            }
        }
        System.out.println(json.append("}"));
    }

    /** ping, add, get, get of a missing counter and an add too long on one connection, and what each returned. */
    private static Map<String, Object> calls(int port, String transport, String protocol, String service, String name)
            throws Exception {
        TSocket socket = new TSocket("127.0.0.1", port, TIMEOUT_MS);
        TTransport wire = transport.equals("framed") ? new TFramedTransport(socket) : socket;
        TProtocol speaking = protocol.equals("compact") ? new TCompactProtocol(wire) : new TBinaryProtocol(wire);
        Counters.Client client =
                new Counters.Client(service.isEmpty() ? speaking : new TMultiplexedProtocol(speaking, service));
        wire.open();
        try {
            Map<String, Object> results = new LinkedHashMap<>();
            results.put("ping", client.ping());
            wire.flush(); // with nothing written, as code may flush: framed, an empty frame
            results.put("add", client.add(name, 2, name + "-1").getTotal());
            results.put("get", client.get(name).getTotal());
            try {
                client.get(name + "-missing");
            } catch (NotFound error) {
                results.put("error", error.getMessage());
            }
            try {
                // TSocket writes a long string apart from the fields before and after it, as several writes.
                client.add("x".repeat(70_000), 1, name + "-2");
            } catch (TApplicationException error) {
                results.put("too long", error.getMessage());
            } catch (Exception error) {
                results.put("too long", error.toString());
            }
            return results;
        } finally {
            wire.close();
        }
    }

    private static String toJson(Map<String, Object> results) {
        StringBuilder json = new StringBuilder("{");
        for (Map.Entry<String, Object> entry : results.entrySet()) {
            Object value = entry.getValue();
            json.append(json.length() > 1 ? ", " : "").append(quote(entry.getKey())).append(": ");
            json.append(value instanceof String ? quote((String) value) : String.valueOf(value));
        }
        return json.append("}").toString();
    }

    private static String quote(String text) {
        StringBuilder quoted = new StringBuilder("\"");
        for (char c : text.toCharArray()) {
            quoted.append(c == '"' || c == '\\' ? "\\" + c : c < 0x20 ? String.format("\\u%04x", (int) c) : c);
        }
        return quoted.append('"').toString();
    }
}
