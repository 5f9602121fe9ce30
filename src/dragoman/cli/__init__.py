"""The `dragoman` command.

dragoman serve          run the proxy
dragoman demo           run the demo (add --check for the scripted walk-through)
dragoman check-config   validate a settings file and list every problem
dragoman mappings       add | list | show | suspend | revoke | rekey account mappings
dragoman keys           list | rotate | retire | new-master-key
dragoman db             upgrade | current
dragoman reconcile      compare every mapping with the payment platform's records
dragoman catalog        list | import (from OpenAPI) | diff the operation catalog
dragoman settings-doc   print the settings reference (docs/settings.md)
dragoman audit          verify a hash-chained audit log
"""

from dragoman.cli import audit, catalog, db, keys, mappings, proxy, reconcile, rekey
from dragoman.cli.common import main

__all__ = ["audit", "catalog", "db", "keys", "main", "mappings", "proxy", "reconcile", "rekey"]
