"""``fastedge-admin certs ca`` and ``fastedge-admin certs node NODE_ID``."""

from __future__ import annotations

import contextlib
import io
import os

from twisted.trial.unittest import SynchronousTestCase

from fastedge.admin import main
from fastedge.mesh.tls import load_identity


class CertsCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        self.mesh_dir = os.path.join(self.data_dir, "mesh")

    def run_admin(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(["--data-dir", self.data_dir, *argv])
            except SystemExit as e:
                code = int(e.code or 0)
        return code, out.getvalue(), err.getvalue()

    def test_ca_then_this_node(self) -> None:
        """`certs ca` writes the CA where mesh.ca_file points; `certs node`
        for this node's id writes mesh.cert_file/key_file, which the node
        then loads."""
        self.assertEqual(self.run_admin("certs", "ca")[0], 0)
        self.assertTrue(os.path.exists(os.path.join(self.mesh_dir, "ca.key")))
        code, out, err = self._node("edge-1", "--ca-key", os.path.join(self.mesh_dir, "ca.key"))
        self.assertEqual(code, 0, err)
        identity = load_identity(
            "edge-1",
            ca_file=os.path.join(self.mesh_dir, "ca.pem"),
            cert_file=os.path.join(self.mesh_dir, "node.pem"),
            key_file=os.path.join(self.mesh_dir, "node.key"),
        )
        self.assertEqual(identity.node_id, "edge-1")

    def _node(self, node_id: str, *extra: str) -> tuple[int, str, str]:
        config = os.path.join(self.data_dir, "node.toml")
        os.makedirs(self.data_dir, exist_ok=True)
        with open(config, "w") as f:
            f.write('[node]\nid = "edge-1"\n')
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(
                    [
                        "--config",
                        config,
                        "--data-dir",
                        self.data_dir,
                        "certs",
                        "node",
                        node_id,
                        *extra,
                    ]
                )
            except SystemExit as e:
                code = int(e.code or 0)
        return code, out.getvalue(), err.getvalue()

    def test_other_node_goes_to_out(self) -> None:
        """A certificate for another node goes to NODE_ID.pem/.key in --out,
        the key readable by its owner only."""
        self.run_admin("certs", "ca")
        out_dir = os.path.abspath(self.mktemp())
        code, out, err = self._node("edge-2", "--out", out_dir)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(os.listdir(out_dir)), ["edge-2.key", "edge-2.pem"])
        self.assertEqual(os.stat(os.path.join(out_dir, "edge-2.key")).st_mode & 0o777, 0o600)
        load_identity(
            "edge-2",
            ca_file=os.path.join(self.mesh_dir, "ca.pem"),
            cert_file=os.path.join(out_dir, "edge-2.pem"),
            key_file=os.path.join(out_dir, "edge-2.key"),
        )

    def test_refusals(self) -> None:
        """An existing CA is not replaced without --force; a bad node id, a
        missing CA and a bad --days are refused with a message and status 1."""
        code, _, err = self._node("edge-2", "--out", self.mktemp())
        self.assertEqual(code, 1)
        self.assertIn("create it with `fastedge-admin certs ca`", err)
        self.assertEqual(self.run_admin("certs", "ca")[0], 0)
        code, _, err = self.run_admin("certs", "ca")
        self.assertEqual(code, 1)
        self.assertIn("exists (--force replaces it", err)
        self.assertEqual(self.run_admin("certs", "ca", "--force")[0], 0)
        code, _, err = self._node("Not_A_Label")
        self.assertEqual(code, 1)
        self.assertIn("must be a lower-case DNS label", err)
        code, _, err = self.run_admin("certs", "ca", "--force", "--days", "0")
        self.assertEqual(code, 1)
        self.assertIn("--days", err)
