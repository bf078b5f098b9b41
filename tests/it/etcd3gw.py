"""etcd3gw against the JSON gateway: put/get/delete, create, prefix reads,
a transaction, a lease with keys, keep-alive and revoke, a lock, a watch.
Prints one line per result; the caller compares them."""
import queue
import sys
import threading

import etcd3gw

c = etcd3gw.client(host="127.0.0.1", port=int(sys.argv[1]), timeout=10)


def show(what, value):
    print(f"{what}: {value!r}", flush=True)


show("put", c.put("k1", "v1"))
show("get", c.get("k1"))
show("get missing", c.get("nothing"))
show("create", c.create("k2", "v2"))
show("create again", c.create("k2", "v3"))
show("prefix", sorted(v for v, _ in c.get_prefix("k")))
show("replace", c.replace("k1", "v1", "v1b"))
show("replace stale", c.replace("k1", "v1", "v1c"))
show("delete", c.delete("k2"))
show("delete missing", c.delete("k2"))
show("delete prefix", c.delete_prefix("k"))
show("after delete", c.get_all())
lease = c.lease(ttl=30)
show("put leased", c.put("leased", "x", lease=lease))
show("lease keys", lease.keys())
show("lease refresh", lease.refresh())
show("lease ttl", 0 < lease.ttl() <= 30)
show("lease revoke", lease.revoke())
show("after revoke", c.get("leased"))
lock = c.lock("gw-lock", ttl=30)
show("lock", lock.acquire())
show("lock held", lock.is_acquired())
other = c.lock("gw-lock", ttl=30)
show("second lock", other.acquire())
show("unlock", lock.release())
show("second lock now", other.acquire())
show("unlock second", other.release())

c.put("w", "0")
rev = int(c.get("w", metadata=True)[0][1]["mod_revision"])
events, cancel = c.watch("w", start_revision=rev)
got = queue.Queue()


def read():
    for e in events:
        got.put(e)


threading.Thread(target=read, daemon=True).start()
c.put("w", "1")
c.delete("w")
for _ in range(3):
    e = got.get(timeout=10)
    show("event", (e.get("type", "PUT"), e["kv"]["key"], e["kv"].get("value")))
cancel()
show("status version", bool(c.status()["version"]))
show("members", len(c.members()))
