"""Treeline's shared contracts: the one leaf package every part may import.

It holds what two parts must agree on and nothing else: MQTT topic names and payload
schemas (:mod:`topics`, :mod:`messages`), the tensor framing of the data plane
(:mod:`tensor_wire`), the error hierarchy with its HTTP mapping (:mod:`errors`), the
injectable clock (:mod:`clock`), emulation profiles (:mod:`profiles`) and free-port
helpers (:mod:`netutil`). It imports no other Treeline package.
"""
