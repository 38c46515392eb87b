"""Pure domain logic: PD paths, PCI relations, QP profiles, XID catalogue, topology model."""
