"""Agents: the gateway that holds their connections and the tunnels through them."""
