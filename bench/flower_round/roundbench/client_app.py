"""ClientApp: no training. Replies with the parameters it received (``reply = "echo"``) or,
with ``reply = "fresh"``, with them plus one (one vector add, so that the reply's bytes are
new, as a trained model's are: Flower's object store is content-addressed and may skip
uploading bytes the SuperLink already holds)."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    arrays: ArrayRecord = msg.content["arrays"]
    if context.run_config["reply"] == "fresh":
        arrays = ArrayRecord([a + np.float32(1.0) for a in arrays.to_numpy_ndarrays()], keep_input=False)
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})})
    return Message(content=content, reply_to=msg)
