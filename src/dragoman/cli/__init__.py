"""The `dragoman` command.

dragoman serve          run the proxy
dragoman demo           run the demo (add --check for the scripted walk-through)
dragoman check-config   validate a settings file and list every problem
dragoman mappings       add | list | show | suspend | revoke account mappings
dragoman keys           list | rotate | retire | new-master-key
dragoman db             upgrade | current
dragoman catalog        list the operations of the catalog
dragoman settings-doc   print the settings reference (docs/settings.md)
"""

from dragoman.cli import db, keys, mappings, proxy
from dragoman.cli.common import main

__all__ = ["db", "keys", "main", "mappings", "proxy"]
