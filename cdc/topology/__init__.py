"""The multi-account topology as code: producers forward to a central bus, the validator checks
what arrives, rules fan ``valid.*`` events out to the consumers.

```
producer account(s)                 central account                        consumers
bus --rule {source: [S]}--> central bus --rule {source: [S...]}--> validation queue -> cdc validate
   (event bus target, role, DLQ)    central bus <-- PutEvents valid.S --------------------+
                                    central bus --rule {source: valid.*, ...}-->
                                        queue / bus (DLQ each)
```

``model`` reads the ``Topology`` from ``[topology]`` in the TOML file and builds the event
patterns; ``delivery`` holds what every rule target gets (retries, dead-letter queue, the
role's policies). Two writers read the same ``Topology``: ``template`` renders one
CloudFormation template for every account (built from ``resources``, one function per resource
kind), and ``apply`` creates the caller's account's part through boto3.
"""
