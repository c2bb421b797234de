"""Drives the sidecar with psycopg 3 at its default prepare_threshold (5).

Usage: psycopg_loop.py DSN CLIENTS ITERATIONS
Each client runs ITERATIONS transactions mixing parameterised queries
(prepared server-side after 5 executions), inserts, an error inside a
transaction and rollbacks, and checks every result. Prints "ok N" on success;
exits 1 with the first error otherwise.
"""
import sys
import threading

import psycopg

dsn, clients, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
errors = []
done = [0]
lock = threading.Lock()


def client(n):
    try:
        with psycopg.connect(dsn) as conn:
            assert conn.prepare_threshold == 5
            for i in range(iterations):
                with conn.transaction():
                    cur = conn.execute("SELECT %s::int8 * 2, %s::text", (i, f"c{n}"))
                    assert cur.fetchone() == (i * 2, f"c{n}"), "wrong result"
                    conn.execute("INSERT INTO psy (client, i) VALUES (%s, %s)", (n, i))
                    cur = conn.execute("SELECT count(*) FROM psy WHERE client = %s", (n,))
                    assert cur.fetchone()[0] == i + 1, "wrong count"
                if i % 7 == 0:
                    try:
                        with conn.transaction():
                            conn.execute("SELECT 1 / %s", (0,))
                    except psycopg.errors.DivisionByZero:
                        pass
                    else:
                        raise AssertionError("no division_by_zero")
                if i % 11 == 0:
                    with conn.transaction(force_rollback=True):
                        conn.execute("INSERT INTO psy (client, i) VALUES (%s, %s)", (n, -1))
            cur = conn.execute("SELECT count(*) FROM psy WHERE client = %s AND i < 0", (n,))
            assert cur.fetchone()[0] == 0, "a rolled-back row is visible"
            with lock:
                done[0] += iterations
    except Exception as e:  # noqa: BLE001 - report every failure
        with lock:
            errors.append(f"client {n}: {type(e).__name__}: {e}")


threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    print("\n".join(errors[:5]))
    sys.exit(1)
print("ok", done[0])
