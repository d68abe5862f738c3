"""RPC to a cell's workers over that cell's own transport: client, server, wire, drivers."""
