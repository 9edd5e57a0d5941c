"""The agent's cluster mode: lpm's custom resources, the kubelet, Events."""
