"""Runs the Eclipse Paho MQTT 3.1.1 interoperability client tests
(vendor/paho-mqtt-testing/interoperability/client_test.py, unmodified)
against a broker at HOST:PORT and prints one JSON line per test:
{"test": name, "result": "pass" | "fail" | "error" | "skip", "detail": ...}.

Upstream runs the file as a script, which reads the broker's address from
its command line and then hands the same command line to unittest; this
runner sets the module's globals the script's main block would set and
runs its test case instead.

Usage: paho_interop.py HOST PORT
"""

import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SUITE = os.path.join(HERE, "..", "..", "vendor", "paho-mqtt-testing", "interoperability")
sys.path.insert(0, SUITE)

# The suite prints its progress: to stderr, so stdout holds only results.
RESULTS = sys.stdout
sys.stdout = sys.stderr

import client_test  # noqa: E402  (after the path is set)

client_test.host = sys.argv[1]
client_test.port = int(sys.argv[2])
# As in client_test.py's main block.
client_test.topics = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
client_test.wildtopics = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
client_test.nosubscribe_topics = ("test/nosubscribe",)


class Collect(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = []

    def addSuccess(self, test):
        super().addSuccess(test)
        self.outcomes.append((test, "pass", ""))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.outcomes.append((test, "fail", self._exc_info_to_string(err, test)))

    def addError(self, test, err):
        super().addError(test, err)
        self.outcomes.append((test, "error", self._exc_info_to_string(err, test)))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.outcomes.append((test, "skip", reason))


suite = unittest.defaultTestLoader.loadTestsFromTestCase(client_test.Test)
runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=Collect)
result = runner.run(suite)
for test, outcome, detail in result.outcomes:
    name = test.id().rsplit(".", 1)[-1]
    line = json.dumps({"test": name, "result": outcome, "detail": detail[-2000:]})
    print(line, file=RESULTS, flush=True)
