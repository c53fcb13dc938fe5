"""Resource models users write: ServiceMeshControlPlane, ServiceMeshMemberRoll,
ServiceMeshExtension (v1alpha1 and v1), Istio's WasmPlugin, and the image manifest."""
