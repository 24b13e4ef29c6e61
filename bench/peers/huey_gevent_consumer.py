"""huey_consumer for `-k greenlet`: gevent must patch the standard library before huey and redis
import socket, as Huey's documentation asks (the consumer does not patch by itself)."""

from gevent import monkey

monkey.patch_all()

from huey.bin.huey_consumer import consumer_main  # noqa: E402

if __name__ == "__main__":
    consumer_main()
