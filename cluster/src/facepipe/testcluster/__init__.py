"""A real single-node Kubernetes for the project's tests, brought up step by step.

Every part is the real component, built or installed from the registries this machine reaches:
kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl from the
``k8s.io/kubernetes`` Go module (``cluster/modules/kubernetes``), helm and CoreDNS from theirs
(``cluster/modules/tools``), etcd, containerd, runc, the CNI plugins and buildah from Debian. The
steps, in order (one module each, readable on their own):

1. ``build``    the binaries, cached by version under the user's cache dir;
2. ``pki``      a cluster CA, a front-proxy CA, every component's certificate and kubeconfig;
3. ``network``  ip_forward, the CNI config, unreachable routes that keep cluster traffic on the machine;
4. ``control``  etcd, kube-apiserver (RBAC, Pod Security, audit, aggregation), controller-manager, scheduler;
5. ``node``     containerd, kubelet, kube-proxy;
6. ``addons``   CoreDNS;
7. ``images``   the pause image and the product's images built from the root Dockerfile with buildah.

``teardown`` undoes all of it. ``python -m facepipe.testcluster up`` runs the steps, prints each
with its time, then ``cluster ready`` and waits for Ctrl-C or SIGTERM.
"""
