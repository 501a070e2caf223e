"""A sample "agent": the kinds of connections an AI agent's tool loop makes.

Run under `agentguard exec`; it does not know it is guarded.
"""
import os
import socket
import subprocess
import sys
import urllib.request

HTTP_PORT, PG_PORT, ADMIN_PORT, MYSQL_PORT = (int(p) for p in sys.argv[1:5])


def step(name, fn):
    try:
        print(f"agent: {name}: {fn()}", flush=True)
    except Exception as e:  # the guard's refusals surface as ordinary errors
        print(f"agent: {name}: FAILED ({type(e).__name__}: {e})", flush=True)


step("GET the docs service", lambda: urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/", timeout=5).status)
def psql(sql):
    r = subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres", "-Atc", sql],
        capture_output=True, text=True, timeout=30,
    )
    return (r.stdout.strip().replace("\n", " / ") or "") + (" " + r.stderr.strip() if r.stderr.strip() else "")


step("read customers (emails, cards masked in flight)", lambda: psql("SELECT name, email, card FROM customers ORDER BY id"))
step("delete every customer", lambda: psql("DELETE FROM customers"))
step("hide a DROP in a multi-statement string", lambda: psql("SELECT 1; DROP TABLE customers"))
step("update a customer on the production database (held; a person approves)",
     lambda: psql("UPDATE customers SET name = 'Ann Smith' WHERE id = 1 RETURNING name"))
step("change a customer's card on production (held; a person denies)",
     lambda: psql("UPDATE customers SET card = '4000 0000 0000 0002' WHERE id = 2"))
def mariadb(sql):
    r = subprocess.run(
        ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(MYSQL_PORT), "-uagent", "-pagentpw",
         "-D", "shop", "--batch", "--skip-column-names", "-e", sql],
        capture_output=True, text=True, timeout=30,
    )
    return (r.stdout.strip().replace("\n", " / ").replace("\t", " ") or "") + (" " + r.stderr.strip() if r.stderr.strip() else "")


step("MariaDB: read orders (emails masked in flight)", lambda: mariadb("SELECT id, customer_email, total FROM orders ORDER BY id"))
step("MariaDB: drop the orders table", lambda: mariadb("DROP TABLE orders"))
step("MariaDB: delete every order", lambda: mariadb("DELETE FROM orders"))
step("reach the admin service (not a target)", lambda: socket.create_connection(("127.0.0.1", ADMIN_PORT), timeout=5).recv(1))
step("the same database over IPv6-mapped address", lambda: socket.create_connection(("::ffff:127.0.0.1", PG_PORT), timeout=5) and "connected")


def udp():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"exfil", ("127.0.0.1", 9999))
    return "sent"


step("send UDP (a QUIC-style side channel)", udp)

pid = os.fork()
if pid == 0:
    step("a forked helper GETs the docs service", lambda: urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/", timeout=5).status)
    os._exit(0)
os.waitpid(pid, 0)
