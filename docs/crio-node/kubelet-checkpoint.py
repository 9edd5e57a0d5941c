"""POST the kubelet's checkpoint API, verifying its self-signed serving certificate (never unverified).

Usage (in the node's network namespace): python3 kubelet-checkpoint.py CA_FILE NODE_NAME PATH
  CA_FILE: the kubelet's own /var/lib/kubelet/pki/kubelet.crt (its SAN is the node name)
  PATH:    /checkpoint/<namespace>/<pod>/<container>?timeout=60
The kubelet listens on 127.0.0.1:10250 here; the TLS name checked is NODE_NAME.
"""
import http.client
import socket
import ssl
import sys

ca, host, path = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=ca)  # verifies the kubelet's self-signed serving cert and its name
class Conn(http.client.HTTPSConnection):
    def connect(self):
        sock = socket.create_connection(("127.0.0.1", 10250))
        self.sock = ctx.wrap_socket(sock, server_hostname=host)
c = Conn(host, 10250, context=ctx)
c.request("POST", path)
r = c.getresponse()
print(r.status, r.read().decode())
