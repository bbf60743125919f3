// Package deploy tests forkwatch's Kubernetes deployment: the manifests, the
// kustomize base and overlay, the alerting rules and the Grafana dashboard.
//
// It is a Go module of its own (deploy/go.mod) so that the Kubernetes and
// prometheus-operator API modules stay out of the forkwatch binary's module.
//
//	cd deploy && go test ./...
//
// promtool (Debian's prometheus package) runs the rule checks and unit tests;
// without it those tests are skipped, or fail under CI=true.
package deploy

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "regenerate prometheusrule.yaml from alerts/forkwatch.rules.yaml")

const (
	namespace      = "forkwatch"
	appName        = "forkwatch"
	image          = "ghcr.io/forkwatch/forkwatch:latest"
	metricsPort    = 9479
	metricsPortStr = "metrics"

	rulesFile      = "alerts/forkwatch.rules.yaml"
	rulesTestFile  = "alerts/forkwatch.rules.test.yaml"
	baseDir        = "base"
	promRuleFile   = "base/prometheusrule.yaml"
	dashboardFile  = "base/dashboard.json"
	metricsFile    = "metrics.txt"
	legacyOverlay  = "overlays/legacy-kernel"
	dashboardCM    = "forkwatch-dashboard"
	dashboardCMKey = "forkwatch.json"
)

// alerts are the alerts forkwatch ships, by name, with their severity.
var alerts = map[string]string{
	"ForkFailures":          "critical",
	"ForkDenied":            "warning",
	"PidMaxNearLimit":       "warning",
	"ThreadsMaxNearLimit":   "warning",
	"PidsCgroupNearLimit":   "warning",
	"PodThreadLeakSuspect":  "warning",
	"PidExhaustionForecast": "warning",
	"ForkwatchDown":         "warning",
	"ForkwatchEventsLost":   "warning",
}

// scrapeMetrics are series Prometheus makes itself for every target; the
// rules and the dashboard may use them although forkwatch does not export
// them (so they are not in metrics.txt).
var scrapeMetrics = map[string][]string{"up": {}}

// targetLabels are the labels every scraped series gets from the PodMonitor:
// job and endpoint from prometheus-operator, instance from Prometheus, node
// from our relabeling.
var targetLabels = []string{"job", "instance", "endpoint", "node"}

// ---------------------------------------------------------------------------
// Strict decoding

// decodeStrict decodes one YAML document into obj the way the API server
// does with fieldValidation=Strict: duplicate keys, unknown fields and fields
// in the wrong case are errors.
func decodeStrict(doc []byte, obj any) error {
	j, err := sigsyaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := sigsjson.UnmarshalStrict(j, obj)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// yamlDocs splits a file into its non-empty YAML documents.
func yamlDocs(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		j, err := sigsyaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if string(j) == "null" { // only comments
			continue
		}
		docs = append(docs, doc)
	}
	return docs
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// manifestTypes are the Go types the manifests in deploy/ decode into, by
// apiVersion/kind. A manifest of any other kind fails the test.
var manifestTypes = map[string]func() any{
	"v1/Namespace":                                  func() any { return new(corev1.Namespace) },
	"v1/ServiceAccount":                             func() any { return new(corev1.ServiceAccount) },
	"v1/Service":                                    func() any { return new(corev1.Service) },
	"v1/ConfigMap":                                  func() any { return new(corev1.ConfigMap) },
	"apps/v1/DaemonSet":                             func() any { return new(appsv1.DaemonSet) },
	"monitoring.coreos.com/v1/PodMonitor":           func() any { return new(monitoringv1.PodMonitor) },
	"monitoring.coreos.com/v1/ServiceMonitor":       func() any { return new(monitoringv1.ServiceMonitor) },
	"monitoring.coreos.com/v1/PrometheusRule":       func() any { return new(monitoringv1.PrometheusRule) },
	"kustomize.config.k8s.io/v1beta1/Kustomization": func() any { return new(kusttypes.Kustomization) },
	"kustomize.config.k8s.io/v1alpha1/Component":    func() any { return new(kusttypes.Kustomization) },
}

func decodeManifest(doc []byte) (any, error) {
	var tm typeMeta
	if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	newObj, ok := manifestTypes[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return nil, fmt.Errorf("unexpected apiVersion %q kind %q", tm.APIVersion, tm.Kind)
	}
	obj := newObj()
	if err := decodeStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	return obj, nil
}

// manifestFiles lists the YAML files of deploy/ that are Kubernetes or
// kustomize manifests: all of them but the Prometheus rule files in alerts/.
func manifestFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path == "alerts" {
			return fs.SkipDir
		}
		if !d.IsDir() && (strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestManifestsDecodeStrictly decodes every manifest in deploy/, the overlay
// and its patch included, into the real API types, so that a misspelt or
// misplaced field fails.
func TestManifestsDecodeStrictly(t *testing.T) {
	files := manifestFiles(t)
	for _, want := range []string{"kustomization.yaml", "base/kustomization.yaml", "base/namespace.yaml",
		"base/serviceaccount.yaml", "base/daemonset.yaml", "base/service.yaml", "base/podmonitor.yaml", promRuleFile,
		legacyOverlay + "/kustomization.yaml", legacyOverlay + "/sys-admin.yaml"} {
		if !slices.Contains(files, want) {
			t.Errorf("%s is missing", want)
		}
	}
	for _, path := range files {
		docs := yamlDocs(t, path)
		if len(docs) == 0 {
			t.Errorf("%s: no YAML document", path)
		}
		for i, doc := range docs {
			obj, err := decodeManifest(doc)
			if err != nil {
				t.Errorf("%s, document %d: %v", path, i+1, err)
				continue
			}
			o, ok := obj.(metav1.Object)
			if !ok {
				continue // a Kustomization
			}
			if o.GetName() == "" {
				t.Errorf("%s, document %d: no metadata.name", path, i+1)
			}
			// Namespaced objects say where they go, so that the files also
			// work with kubectl apply -f.
			if _, isNS := obj.(*corev1.Namespace); !isNS && o.GetNamespace() != namespace {
				t.Errorf("%s, document %d: metadata.namespace %q, want %q", path, i+1, o.GetNamespace(), namespace)
			}
		}
	}
}

// TestKustomizationListsEveryManifest: a manifest left out of
// base/kustomization.yaml would never be applied.
func TestKustomizationListsEveryManifest(t *testing.T) {
	var k kusttypes.Kustomization
	if err := decodeStrict(readFile(t, baseDir+"/kustomization.yaml"), &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", baseDir, err)
	}
	var files []string
	for _, f := range manifestFiles(t) {
		if dir, name := filepath.Split(f); dir == baseDir+"/" && name != "kustomization.yaml" {
			files = append(files, name)
		}
	}
	got := slices.Clone(k.Resources)
	sort.Strings(got)
	sort.Strings(files)
	if !slices.Equal(got, files) {
		t.Errorf("%s/kustomization.yaml resources = %v, want every manifest in %s/: %v", baseDir, got, baseDir, files)
	}
}

// ---------------------------------------------------------------------------
// Rendered kustomizations

// rendered is the output of a kustomize build, decoded strictly.
type rendered struct {
	namespace      *corev1.Namespace
	serviceAccount *corev1.ServiceAccount
	daemonSet      *appsv1.DaemonSet
	service        *corev1.Service
	podMonitor     *monitoringv1.PodMonitor
	promRule       *monitoringv1.PrometheusRule
	configMap      *corev1.ConfigMap
	all            []metav1.Object
}

func build(t *testing.T, dir string) *rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	r := new(rendered)
	for _, res := range m.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		obj, err := decodeManifest(y)
		if err != nil {
			t.Fatalf("kustomize build %s: %s/%s: %v", dir, res.GetKind(), res.GetName(), err)
		}
		set := func(dst any, name string) {
			v := reflect.ValueOf(dst).Elem()
			if !v.IsNil() {
				t.Fatalf("kustomize build %s: a second %s (%s)", dir, res.GetKind(), name)
			}
			v.Set(reflect.ValueOf(obj))
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			set(&r.namespace, o.Name)
		case *corev1.ServiceAccount:
			set(&r.serviceAccount, o.Name)
		case *appsv1.DaemonSet:
			set(&r.daemonSet, o.Name)
		case *corev1.Service:
			set(&r.service, o.Name)
		case *monitoringv1.PodMonitor:
			set(&r.podMonitor, o.Name)
		case *monitoringv1.PrometheusRule:
			set(&r.promRule, o.Name)
		case *corev1.ConfigMap:
			set(&r.configMap, o.Name)
		default:
			t.Fatalf("kustomize build %s: unexpected %T", dir, obj)
		}
		r.all = append(r.all, obj.(metav1.Object))
	}
	for name, v := range map[string]any{"Namespace": r.namespace, "ServiceAccount": r.serviceAccount,
		"DaemonSet": r.daemonSet, "Service": r.service, "PodMonitor": r.podMonitor,
		"PrometheusRule": r.promRule, "ConfigMap": r.configMap} {
		if reflect.ValueOf(v).IsNil() {
			t.Fatalf("kustomize build %s: no %s", dir, name)
		}
	}
	return r
}

// variant is what differs between the base and the legacy-kernel overlay.
type variant struct {
	dir               string
	capabilities      []corev1.Capability
	allowPrivEsc      bool
	cgroupRecursiveRO bool
}

var variants = []variant{
	{
		dir:               ".",
		capabilities:      []corev1.Capability{"BPF", "PERFMON", "SYS_RESOURCE", "DAC_READ_SEARCH"},
		allowPrivEsc:      false,
		cgroupRecursiveRO: true,
	},
	{
		dir:               legacyOverlay,
		capabilities:      []corev1.Capability{"SYS_ADMIN", "SYS_RESOURCE", "DAC_READ_SEARCH"},
		allowPrivEsc:      true,
		cgroupRecursiveRO: false,
	},
}

func TestNamespaces(t *testing.T) {
	for _, v := range variants {
		r := build(t, v.dir)
		if r.namespace.Name != namespace {
			t.Errorf("%s: Namespace %q, want %q", v.dir, r.namespace.Name, namespace)
		}
		if got := r.namespace.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
			t.Errorf("%s: Namespace label pod-security.kubernetes.io/enforce = %q, want privileged", v.dir, got)
		}
		for _, o := range r.all {
			if _, isNS := o.(*corev1.Namespace); !isNS && o.GetNamespace() != namespace {
				t.Errorf("%s: %T %s is in namespace %q, want %q", v.dir, o, o.GetName(), o.GetNamespace(), namespace)
			}
		}
	}
}

// TestDaemonSet checks the security settings and everything else the
// DaemonSet promises, in the base and in the legacy-kernel overlay.
// imageArchitectures are the node architectures the image is built for,
// each with the name bpf2go gives its committed BPF object in tracer/.
var imageArchitectures = map[string]string{"amd64": "x86", "arm64": "arm64"}

// The DaemonSet runs on Linux nodes of exactly the image's architectures,
// each of which has its BPF objects committed.
func checkArchitectures(t *testing.T, pod corev1.PodSpec) {
	t.Helper()
	if pod.NodeSelector["kubernetes.io/os"] != "linux" || pod.NodeSelector["kubernetes.io/arch"] != "" {
		t.Errorf("nodeSelector %v: want kubernetes.io/os linux, and the architectures in the node affinity", pod.NodeSelector)
	}
	var arches []string
	if a := pod.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
		if len(terms) == 1 && len(terms[0].MatchExpressions) == 1 {
			if e := terms[0].MatchExpressions[0]; e.Key == "kubernetes.io/arch" && e.Operator == corev1.NodeSelectorOpIn {
				arches = slices.Sorted(slices.Values(e.Values))
			}
		}
	}
	want := slices.Sorted(maps.Keys(imageArchitectures))
	if !slices.Equal(arches, want) {
		t.Errorf("the DaemonSet runs on architectures %v (node affinity %+v), want the image's %v", arches, pod.Affinity, want)
	}
	for arch, obj := range imageArchitectures {
		if _, err := os.Stat(filepath.Join("..", "tracer", "forkwatch_"+obj+"_bpfel.o")); err != nil {
			t.Errorf("%s nodes: no BPF object: %v", arch, err)
		}
	}
}

func TestDaemonSet(t *testing.T) {
	for _, v := range variants {
		t.Run(strings.ReplaceAll(v.dir, "/", "_"), func(t *testing.T) {
			r := build(t, v.dir)
			checkDaemonSet(t, r, v)
		})
	}
}

func checkDaemonSet(t *testing.T, r *rendered, v variant) {
	ds := r.daemonSet
	if ds.Name != appName {
		t.Errorf("DaemonSet name %q, want %q", ds.Name, appName)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("DaemonSet selector %v does not select its pod template's labels %v (%v)", ds.Spec.Selector, ds.Spec.Template.Labels, err)
	}

	us := ds.Spec.UpdateStrategy
	if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil ||
		us.RollingUpdate.MaxUnavailable == nil || *us.RollingUpdate.MaxUnavailable != intstr.FromString("10%") {
		t.Errorf("updateStrategy = %+v, want RollingUpdate with maxUnavailable 10%%", us)
	}

	pod := ds.Spec.Template.Spec
	checkArchitectures(t, pod)
	if !pod.HostPID {
		t.Error("hostPID must be true: forkwatch reads the node's /proc")
	}
	if pod.HostNetwork || pod.HostIPC {
		t.Errorf("hostNetwork = %v, hostIPC = %v: want neither (metrics are scraped on the pod IP)", pod.HostNetwork, pod.HostIPC)
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q, want system-node-critical", pod.PriorityClassName)
	}
	tolerateAll := false
	for _, tol := range pod.Tolerations {
		if tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == "" {
			tolerateAll = true
		}
	}
	if !tolerateAll {
		t.Errorf("tolerations = %+v: want one with operator Exists and neither key nor effect (every taint)", pod.Tolerations)
	}
	if pod.ServiceAccountName != r.serviceAccount.Name {
		t.Errorf("serviceAccountName = %q, want %q", pod.ServiceAccountName, r.serviceAccount.Name)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken ||
		r.serviceAccount.AutomountServiceAccountToken == nil || *r.serviceAccount.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken must be false in the pod spec and the ServiceAccount: forkwatch never calls the API")
	}
	if pod.SecurityContext != nil && pod.SecurityContext.SeccompProfile != nil &&
		pod.SecurityContext.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod seccompProfile RuntimeDefault: bpf() is refused under many runtimes' default profile")
	}
	if len(pod.InitContainers) != 0 || len(pod.EphemeralContainers) != 0 {
		t.Error("unexpected init or ephemeral containers")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.Image != image {
		t.Errorf("image = %q, want %q", c.Image, image)
	}
	for _, arg := range []string{"--metrics-addr=:9479", "--output=json"} {
		if !slices.Contains(c.Args, arg) {
			t.Errorf("args %q lack %q", c.Args, arg)
		}
	}
	if len(c.Command) != 0 {
		t.Errorf("command = %q: leave it to the image's entrypoint", c.Command)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != metricsPortStr || c.Ports[0].ContainerPort != metricsPort ||
		c.Ports[0].Protocol != corev1.ProtocolTCP || c.Ports[0].HostPort != 0 {
		t.Errorf("ports = %+v, want one TCP port %d named %q and no hostPort", c.Ports, metricsPort, metricsPortStr)
	}

	// Security context.
	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no container securityContext")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged: true: forkwatch needs only its capabilities")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("runAsUser must be 0: added capabilities reach a non-root process only in its bounding set")
	}
	if sc.RunAsNonRoot != nil && *sc.RunAsNonRoot {
		t.Error("runAsNonRoot: true contradicts runAsUser 0")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem must be true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation != v.allowPrivEsc {
		t.Errorf("allowPrivilegeEscalation = %v, want %v", deref(sc.AllowPrivilegeEscalation), v.allowPrivEsc)
	}
	if sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount {
		t.Errorf("procMount = %q, want Default", *sc.ProcMount)
	}
	if sc.Capabilities == nil {
		t.Fatal("no capabilities")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities.drop = %v, want [ALL]", sc.Capabilities.Drop)
	}
	gotCaps := slices.Clone(sc.Capabilities.Add)
	wantCaps := slices.Clone(v.capabilities)
	slices.Sort(gotCaps)
	slices.Sort(wantCaps)
	if !slices.Equal(gotCaps, wantCaps) {
		t.Errorf("capabilities.add = %v, want exactly %v", sc.Capabilities.Add, v.capabilities)
	}
	if sp := sc.SeccompProfile; sp == nil || (sp.Type != corev1.SeccompProfileTypeUnconfined && sp.Type != corev1.SeccompProfileTypeLocalhost) {
		t.Errorf("seccompProfile = %+v, want Unconfined (or a Localhost profile allowing bpf)", sp)
	}

	// Resources: what the scheduler must reserve (a CPU and a memory
	// request), a memory limit at or above the request so a leak cannot
	// take the node, and no CPU limit. The values themselves are sized by
	// make bench (README "What it costs"), not pinned here.
	res := c.Resources
	for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := res.Requests[name]; !ok || q.Sign() <= 0 {
			t.Errorf("resources.requests.%s = %v: want a positive request", name, q.String())
		}
	}
	if lim, ok := res.Limits[corev1.ResourceMemory]; !ok || lim.Cmp(res.Requests[corev1.ResourceMemory]) < 0 {
		t.Errorf("resources.limits.memory = %v: want a limit at or above the request %v", lim.String(), res.Requests.Memory().String())
	}
	if _, ok := res.Limits[corev1.ResourceCPU]; ok {
		t.Error("a CPU limit throttles forkwatch during a storm and loses events: remove it")
	}

	// Probes: HTTP on the metrics port, never exec (a fork, which fails on a node out of PIDs).
	checkProbe := func(name string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe on %s", name, path)
			return
		}
		if p.Exec != nil || p.GRPC != nil || p.TCPSocket != nil {
			t.Errorf("%s: only httpGet", name)
		}
		if p.HTTPGet.Path != path {
			t.Errorf("%s path = %q, want %q", name, p.HTTPGet.Path, path)
		}
		if p.HTTPGet.Port != intstr.FromString(metricsPortStr) && p.HTTPGet.Port != intstr.FromInt32(metricsPort) {
			t.Errorf("%s port = %v, want %q", name, p.HTTPGet.Port.String(), metricsPortStr)
		}
	}
	checkProbe("livenessProbe", c.LivenessProbe, "/healthz")
	checkProbe("readinessProbe", c.ReadinessProbe, "/readyz")
	if c.StartupProbe != nil && c.StartupProbe.Exec != nil {
		t.Error("startupProbe: no exec probes")
	}

	// GOMEMLIMIT, if set, below the memory limit.
	for _, e := range c.Env {
		if e.Name == "GOMEMLIMIT" {
			q, err := resource.ParseQuantity(strings.TrimSuffix(strings.Replace(e.Value, "iB", "i", 1), "B"))
			if lim := res.Limits[corev1.ResourceMemory]; err != nil || q.Cmp(lim) >= 0 {
				t.Errorf("GOMEMLIMIT %q must be below the memory limit %s (%v)", e.Value, lim.String(), err)
			}
		}
	}

	// Volumes: host paths from an allowed list, every one mounted, and only read-only.
	required := []string{"/sys/fs/cgroup", "/sys/kernel/btf", "/sys/kernel/tracing", "/var/log/pods"}
	allowed := append(slices.Clone(required), "/sys/kernel/debug")
	hostPaths := map[string]string{} // volume name -> host path
	for _, vol := range pod.Volumes {
		if vol.HostPath == nil {
			continue
		}
		if !slices.Contains(allowed, vol.HostPath.Path) {
			t.Errorf("volume %s: hostPath %s is not one forkwatch needs (%v)", vol.Name, vol.HostPath.Path, allowed)
		}
		hostPaths[vol.Name] = vol.HostPath.Path
	}
	for _, p := range required {
		found := false
		for _, hp := range hostPaths {
			found = found || hp == p
		}
		if !found {
			t.Errorf("no hostPath volume for %s", p)
		}
	}
	mounted := map[string]bool{}
	for _, m := range c.VolumeMounts {
		hp, isHost := hostPaths[m.Name]
		if !isHost {
			continue
		}
		mounted[m.Name] = true
		if !m.ReadOnly {
			t.Errorf("hostPath volume %s (%s) is mounted at %s without readOnly: true", m.Name, hp, m.MountPath)
		}
		if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional {
			t.Errorf("volume %s: Bidirectional mount propagation", m.Name)
		}
		if m.MountPath != hp {
			t.Errorf("volume %s: host %s mounted at %s; forkwatch expects host paths at the same place", m.Name, hp, m.MountPath)
		}
		if hp == "/sys/fs/cgroup" {
			rro := m.RecursiveReadOnly != nil && *m.RecursiveReadOnly == corev1.RecursiveReadOnlyIfPossible
			if rro != v.cgroupRecursiveRO {
				t.Errorf("/sys/fs/cgroup recursiveReadOnly = %v, want IfPossible: %v", deref(m.RecursiveReadOnly), v.cgroupRecursiveRO)
			}
		}
	}
	for name, hp := range hostPaths {
		if !mounted[name] {
			t.Errorf("hostPath volume %s (%s) is never mounted", name, hp)
		}
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// TestScraping checks the PodMonitor and the Service against the DaemonSet.
func TestScraping(t *testing.T) {
	r := build(t, ".")
	podLabels := labels.Set(r.daemonSet.Spec.Template.Labels)

	pm := r.podMonitor
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(podLabels) {
		t.Errorf("PodMonitor selector %v does not select the forkwatch pods %v (%v)", pm.Spec.Selector, podLabels, err)
	}
	if ns := pm.Spec.NamespaceSelector; !ns.Any && len(ns.MatchNames) > 0 && !slices.Contains(ns.MatchNames, namespace) {
		t.Errorf("PodMonitor namespaceSelector %v leaves out %s", ns, namespace)
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("%d podMetricsEndpoints, want 1", len(pm.Spec.PodMetricsEndpoints))
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if ep.Port == nil || *ep.Port != metricsPortStr {
		t.Errorf("podMetricsEndpoints[0].port = %v, want %q", deref(ep.Port), metricsPortStr)
	}
	if ep.Path != "" && ep.Path != "/metrics" {
		t.Errorf("path = %q, want /metrics", ep.Path)
	}
	if !ep.HonorLabels {
		t.Error("honorLabels must be true: forkwatch's namespace/pod labels name the pod that forked")
	}
	nodeLabel := false
	for _, rc := range ep.RelabelConfigs {
		if slices.Equal(rc.SourceLabels, []monitoringv1.LabelName{"__meta_kubernetes_pod_node_name"}) &&
			rc.TargetLabel == "node" && (rc.Action == "" || strings.EqualFold(rc.Action, "replace")) {
			nodeLabel = true
		}
		if strings.EqualFold(rc.Action, "labeldrop") || strings.EqualFold(rc.Action, "labelkeep") {
			re, err := regexp.Compile("^(?:" + rc.Regex + ")$")
			if err != nil {
				t.Errorf("relabeling %+v: %v", rc, err)
				continue
			}
			if strings.EqualFold(rc.Action, "labeldrop") && re.MatchString("node") {
				t.Errorf("relabeling %+v drops the node label", rc)
			}
		}
	}
	if !nodeLabel {
		t.Error("no relabeling of __meta_kubernetes_pod_node_name into node")
	}

	svc := r.service
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service clusterIP = %q, want None (headless)", svc.Spec.ClusterIP)
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) || len(svc.Spec.Selector) == 0 {
		t.Errorf("Service selector %v does not select the forkwatch pods %v", svc.Spec.Selector, podLabels)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != metricsPortStr || svc.Spec.Ports[0].Port != metricsPort ||
		svc.Spec.Ports[0].TargetPort != intstr.FromString(metricsPortStr) {
		t.Errorf("Service ports = %+v, want metrics 9479 -> metrics", svc.Spec.Ports)
	}
}

// TestDashboardConfigMap: the generated ConfigMap carries dashboard.json as is,
// under the label Grafana's sidecar looks for.
func TestDashboardConfigMap(t *testing.T) {
	r := build(t, ".")
	cm := r.configMap
	if cm.Name != dashboardCM {
		t.Errorf("ConfigMap %q, want %q (no hash suffix)", cm.Name, dashboardCM)
	}
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("ConfigMap labels %v lack grafana_dashboard: \"1\"", cm.Labels)
	}
	if got, want := cm.Data[dashboardCMKey], string(readFile(t, dashboardFile)); got != want {
		t.Errorf("ConfigMap data[%s] differs from %s", dashboardCMKey, dashboardFile)
	}
}

// TestOverlayChangesOnlyTheDaemonSet: the legacy-kernel overlay renders the
// same objects as the base, and changes nothing but the DaemonSet.
func TestOverlayChangesOnlyTheDaemonSet(t *testing.T) {
	base, legacy := build(t, "."), build(t, legacyOverlay)
	if len(base.all) != len(legacy.all) {
		t.Fatalf("base renders %d objects, the overlay %d", len(base.all), len(legacy.all))
	}
	for i := range base.all {
		if _, isDS := base.all[i].(*appsv1.DaemonSet); isDS {
			continue
		}
		if !reflect.DeepEqual(base.all[i], legacy.all[i]) {
			t.Errorf("overlay changes %T %s", base.all[i], base.all[i].GetName())
		}
	}
	// Apart from the patched fields, the DaemonSets are equal.
	b, l := base.daemonSet.DeepCopy(), legacy.daemonSet.DeepCopy()
	for _, ds := range []*appsv1.DaemonSet{b, l} {
		c := &ds.Spec.Template.Spec.Containers[0]
		c.SecurityContext.Capabilities.Add = nil
		c.SecurityContext.AllowPrivilegeEscalation = nil
		for i := range c.VolumeMounts {
			c.VolumeMounts[i].RecursiveReadOnly = nil
		}
	}
	if !reflect.DeepEqual(b, l) {
		t.Error("the legacy-kernel overlay changes more of the DaemonSet than capabilities, allowPrivilegeEscalation and recursiveReadOnly")
	}
}

// ---------------------------------------------------------------------------
// Alerting rules

type rulesFileGroups struct {
	Groups []monitoringv1.RuleGroup `json:"groups"`
}

func readRules(t *testing.T) []monitoringv1.RuleGroup {
	t.Helper()
	var rf rulesFileGroups
	if err := decodeStrict(readFile(t, rulesFile), &rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	if len(rf.Groups) == 0 {
		t.Fatalf("%s: no groups", rulesFile)
	}
	return rf.Groups
}

const promRuleHeader = `# GENERATED from deploy/alerts/forkwatch.rules.yaml, which is the source: do
# not edit by hand. Regenerate with
#   cd deploy && go test -run TestPrometheusRuleMatchesRulesFile -update
#
# forkwatch's alerts for prometheus-operator. The Prometheus resource's
# ruleSelector must match these labels (kube-prometheus-stack, for one, wants
# a release: <name> label) and its ruleNamespaceSelector the forkwatch
# namespace.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: forkwatch
  namespace: forkwatch
  labels:
    app.kubernetes.io/name: forkwatch
spec:
`

// generatePrometheusRule embeds the rules file's groups, from its `groups:`
// line on and comments included, as the PrometheusRule's spec.
func generatePrometheusRule(t *testing.T) []byte {
	t.Helper()
	src := string(readFile(t, rulesFile))
	i := strings.Index(src, "\ngroups:\n")
	if i < 0 {
		t.Fatalf("%s: no top-level groups: line", rulesFile)
	}
	var b strings.Builder
	b.WriteString(promRuleHeader)
	for _, line := range strings.SplitAfter(src[i+1:], "\n") {
		if strings.TrimSpace(line) != "" {
			b.WriteString("  ")
		}
		b.WriteString(line)
	}
	return []byte(b.String())
}

// TestPrometheusRuleMatchesRulesFile: prometheusrule.yaml's spec.groups are the
// plain rules file's groups (which promtool checks and unit-tests).
func TestPrometheusRuleMatchesRulesFile(t *testing.T) {
	want := generatePrometheusRule(t)
	if *update {
		if err := os.WriteFile(promRuleFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", promRuleFile)
	}
	docs := yamlDocs(t, promRuleFile)
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want 1", promRuleFile, len(docs))
	}
	var pr monitoringv1.PrometheusRule
	if err := decodeStrict(docs[0], &pr); err != nil {
		t.Fatalf("%s: %v", promRuleFile, err)
	}
	groups := readRules(t)
	if !reflect.DeepEqual(pr.Spec.Groups, groups) {
		g, _ := json.MarshalIndent(pr.Spec.Groups, "", "  ")
		w, _ := json.MarshalIndent(groups, "", "  ")
		t.Errorf("%s spec.groups differ from %s (regenerate with -update):\n%s", promRuleFile, rulesFile, firstDiff(string(g), string(w)))
	}
	if got := readFile(t, promRuleFile); !bytes.Equal(got, want) {
		t.Errorf("%s is not what %s generates (comments or layout differ); regenerate: go test -run TestPrometheusRuleMatchesRulesFile -update\n%s",
			promRuleFile, rulesFile, firstDiff(string(got), string(want)))
	}
}

func firstDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			return fmt.Sprintf("line %d:\n  got:  %q\n  want: %q", i+1, gl, wl)
		}
	}
	return "(no line differs)"
}

// TestAlertRules checks that the rules are the alerts forkwatch promises, each
// with a severity and runbook text.
func TestAlertRules(t *testing.T) {
	seen := map[string]bool{}
	for _, g := range readRules(t) {
		for _, r := range g.Rules {
			if r.Record != "" {
				continue
			}
			if seen[r.Alert] {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			seen[r.Alert] = true
			sev, ok := alerts[r.Alert]
			if !ok {
				t.Errorf("unexpected alert %s", r.Alert)
				continue
			}
			if r.Labels["severity"] != sev {
				t.Errorf("%s: severity %q, want %q", r.Alert, r.Labels["severity"], sev)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
			if !strings.Contains(r.Annotations["summary"], "{{ $labels.node }}") {
				t.Errorf("%s: the summary should name the node", r.Alert)
			}
		}
	}
	for name := range alerts {
		if !seen[name] {
			t.Errorf("alert %s is missing", name)
		}
	}
}

// ruleTests is the promtool unit-test file's format.
type ruleTests struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval"`
	Tests              []struct {
		Name        string `json:"name"`
		Interval    string `json:"interval"`
		InputSeries []struct {
			Series string `json:"series"`
			Values string `json:"values"`
		} `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `json:"eval_time"`
			Alertname string `json:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `json:"exp_labels"`
				ExpAnnotations map[string]string `json:"exp_annotations"`
			} `json:"exp_alerts"`
		} `json:"alert_rule_test"`
		PromqlExprTest []json.RawMessage `json:"promql_expr_test"`
	} `json:"tests"`
}

// TestRuleTestsCoverEveryAlert: every alert has a case that fires and a case
// that must not.
func TestRuleTestsCoverEveryAlert(t *testing.T) {
	var rt ruleTests
	if err := decodeStrict(readFile(t, rulesTestFile), &rt); err != nil {
		t.Fatalf("%s: %v", rulesTestFile, err)
	}
	if !slices.Contains(rt.RuleFiles, filepath.Base(rulesFile)) {
		t.Errorf("%s: rule_files %v lack %s", rulesTestFile, rt.RuleFiles, filepath.Base(rulesFile))
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range rt.Tests {
		for _, a := range tc.AlertRuleTest {
			if _, ok := alerts[a.Alertname]; !ok {
				t.Errorf("%s: test for unknown alert %s", rulesTestFile, a.Alertname)
			}
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	for name := range alerts {
		if !fires[name] {
			t.Errorf("%s: no case where %s fires", rulesTestFile, name)
		}
		if !silent[name] {
			t.Errorf("%s: no case where %s must not fire", rulesTestFile, name)
		}
	}
}

// ---------------------------------------------------------------------------
// Metric names

// readMetrics reads metrics.txt: one series name per line, then its labels
// (forkwatch's own, not the scrape's), comma-separated. The end-to-end
// metrics test checks the binary exports exactly these.
func readMetrics(t *testing.T) (names []string, labels map[string][]string) {
	t.Helper()
	data := string(readFile(t, metricsFile))
	if !strings.HasSuffix(data, "\n") {
		t.Errorf("%s: no final newline", metricsFile)
	}
	labels = map[string][]string{}
	valid := regexp.MustCompile(`^(forkwatch_[a-z0-9_]+)(?: ([a-z_]+(?:,[a-z_]+)*))?$`)
	for i, line := range strings.Split(strings.TrimSuffix(data, "\n"), "\n") {
		m := valid.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("%s:%d: %q is not a forkwatch metric name with its labels", metricsFile, i+1, line)
			continue
		}
		if slices.Contains(names, m[1]) {
			t.Errorf("%s:%d: %s listed twice", metricsFile, i+1, m[1])
		}
		names = append(names, m[1])
		labels[m[1]] = []string{}
		if m[2] != "" {
			labels[m[1]] = strings.Split(m[2], ",")
		}
	}
	return names, labels
}

func readMetricNames(t *testing.T) []string {
	names, _ := readMetrics(t)
	return names
}

// TestMetricsList: every histogram in metrics.txt is complete.
func TestMetricsList(t *testing.T) {
	names := readMetricNames(t)
	for _, n := range names {
		if base, ok := strings.CutSuffix(n, "_bucket"); ok {
			for _, s := range []string{"_sum", "_count"} {
				if !slices.Contains(names, base+s) {
					t.Errorf("%s: histogram %s lacks %s%s", metricsFile, base, base, s)
				}
			}
		}
	}
}

// grafanaVars replaces Grafana's interval variables by a duration, so that a
// panel's query is PromQL. Other variables are only allowed in strings.
var grafanaVars = regexp.MustCompile(`\$\{?__(?:rate_interval|interval|range)\}?`)

type query struct {
	where string
	expr  string
}

func dashboardQueries(t *testing.T) (queries []query, templateMetrics []query) {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, dashboardFile), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			queries = append(queries, query{fmt.Sprintf("%s: panel %d %q, target %s", dashboardFile, p.ID, p.Title, tg.RefID),
				grafanaVars.ReplaceAllString(tg.Expr, "5m")})
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((?:(.+),\s*)?([a-zA-Z_][a-zA-Z0-9_]*)\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(strings.TrimSpace(v.Definition))
		if m == nil || m[1] == "" {
			t.Errorf("%s: variable %s: want label_values(<metric selector>, <label>), got %q", dashboardFile, v.Name, v.Definition)
			continue
		}
		templateMetrics = append(templateMetrics, query{fmt.Sprintf("%s: variable %s", dashboardFile, v.Name), m[1]})
	}
	return queries, templateMetrics
}

// readmeQueries are the ```promql blocks of README.md, one query each.
func readmeQueries(t *testing.T) []query {
	t.Helper()
	var qs []query
	blocks := regexp.MustCompile("(?s)```promql\n(.*?)```").FindAllStringSubmatch(string(readFile(t, "README.md")), -1)
	for i, b := range blocks {
		qs = append(qs, query{fmt.Sprintf("README.md: promql block %d", i+1), b[1]})
	}
	if len(qs) == 0 {
		t.Error("README.md: no ```promql blocks")
	}
	return qs
}

func ruleQueries(t *testing.T) []query {
	var qs []query
	for _, g := range readRules(t) {
		for _, r := range g.Rules {
			qs = append(qs, query{fmt.Sprintf("%s: %s", rulesFile, r.Alert+r.Record), r.Expr.String()})
		}
	}
	return qs
}

// TestQueriesUseExportedMetrics: every metric that a rule or a dashboard panel
// queries is one forkwatch exports (metrics.txt) or Prometheus's own `up`,
// and every label they match on or group by exists.
func TestQueriesUseExportedMetrics(t *testing.T) {
	exported, metricLabels := readMetrics(t)
	allLabels := map[string]bool{"__name__": true}
	for _, l := range targetLabels {
		allLabels[l] = true
	}
	for _, ls := range metricLabels {
		for _, l := range ls {
			allLabels[l] = true
		}
	}
	dq, tq := dashboardQueries(t)
	queries := slices.Concat(ruleQueries(t), dq, tq, readmeQueries(t))
	used := map[string]bool{}
	for _, q := range queries {
		refs, err := promqlReferences(q.expr)
		if err != nil {
			t.Errorf("%s: %v\n\t%s", q.where, err, q.expr)
			continue
		}
		if len(refs.selectors) == 0 {
			t.Errorf("%s: queries no metric: %s", q.where, q.expr)
		}
		for _, s := range refs.selectors {
			own, isScrape := scrapeMetrics[s.name]
			if !isScrape {
				if !slices.Contains(exported, s.name) {
					t.Errorf("%s: metric %q is not in %s", q.where, s.name, metricsFile)
					continue
				}
				own = metricLabels[s.name]
			}
			used[s.name] = true
			for _, l := range s.labels {
				if !slices.Contains(own, l) && !slices.Contains(targetLabels, l) {
					t.Errorf("%s: %s has no label %q", q.where, s.name, l)
				}
			}
		}
		for _, l := range refs.grouping {
			if !allLabels[l] {
				t.Errorf("%s: groups by unknown label %q", q.where, l)
			}
		}
	}
	for _, n := range exported {
		if !used[n] {
			t.Logf("note: %s is used by no rule or panel", n)
		}
	}

	// The rules' unit tests feed series of exported metrics only, too.
	var rt ruleTests
	if err := decodeStrict(readFile(t, rulesTestFile), &rt); err != nil {
		t.Fatalf("%s: %v", rulesTestFile, err)
	}
	for _, tc := range rt.Tests {
		for _, s := range tc.InputSeries {
			name, _, _ := strings.Cut(s.Series, "{")
			if _, isScrape := scrapeMetrics[name]; !isScrape && !slices.Contains(exported, name) {
				t.Errorf("%s: input series of unknown metric %q", rulesTestFile, name)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Dashboard

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasourceRef  `json:"datasource"`
			Multi      bool            `json:"multi"`
			IncludeAll bool            `json:"includeAll"`
		} `json:"list"`
	} `json:"templating"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func (d *dashboard) allPanels() []panel {
	var all []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return all
}

// TestDashboard: the dashboard is per node (a node variable every query
// filters on) and on a selectable Prometheus data source.
func TestDashboard(t *testing.T) {
	var d dashboard
	if err := json.Unmarshal(readFile(t, dashboardFile), &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Name {
		case "datasource":
			if v.Type != "datasource" || string(v.Query) != `"prometheus"` {
				t.Errorf("variable datasource: type %q query %s, want a prometheus datasource variable", v.Type, v.Query)
			}
		case "node":
			if v.Type != "query" || !v.Multi || !v.IncludeAll || v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable node: want a multi-value query variable with All, on ${datasource}")
			}
		}
	}
	if !vars["datasource"] || !vars["node"] {
		t.Errorf("template variables %v: want datasource and node", vars)
	}
	ids := map[int]bool{}
	queries := 0
	for _, p := range d.allPanels() {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or not unique", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos == nil || p.GridPos.W == 0 || p.GridPos.H == 0 {
			t.Errorf("panel %d %q: no gridPos", p.ID, p.Title)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %d %q: datasource must be ${datasource}", p.ID, p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %d %q: no query", p.ID, p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			if tg.Datasource != nil && tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %d %q target %s: datasource must be ${datasource}", p.ID, p.Title, tg.RefID)
			}
			if !strings.Contains(tg.Expr, `node=~"$node"`) {
				t.Errorf("panel %d %q target %s: the query does not filter on the node variable: %s", p.ID, p.Title, tg.RefID, tg.Expr)
			}
		}
	}
	if queries == 0 {
		t.Error("the dashboard has no queries")
	}
}

// ---------------------------------------------------------------------------
// promtool

func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool is not on PATH (CI=true): install Debian's prometheus package")
		}
		t.Skip("promtool is not on PATH: install Debian's prometheus package to check the rules")
	}
	return p
}

func runPromtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestPromtoolCheckRules(t *testing.T) {
	runPromtool(t, filepath.Dir(rulesFile), "check", "rules", filepath.Base(rulesFile))
}

func TestPromtoolTestRules(t *testing.T) {
	runPromtool(t, filepath.Dir(rulesTestFile), "test", "rules", filepath.Base(rulesTestFile))
}

// TestPromtoolCheckQueries parses every dashboard panel's query and the
// README's queries with Prometheus's own parser, as recording rules.
func TestPromtoolCheckQueries(t *testing.T) {
	promtool(t)
	queries, _ := dashboardQueries(t)
	queries = append(queries, readmeQueries(t)...)
	var groups rulesFileGroups
	g := monitoringv1.RuleGroup{Name: "queries"}
	for i, q := range queries {
		g.Rules = append(g.Rules, monitoringv1.Rule{Record: fmt.Sprintf("forkwatch_test:query_%d", i), Expr: intstr.FromString(q.expr)})
	}
	groups.Groups = append(groups.Groups, g)
	y, err := sigsyaml.Marshal(groups)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "queries.rules.yaml"), y, 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, dir, "check", "rules", "queries.rules.yaml")
}

// ---------------------------------------------------------------------------
// Dockerfile

func TestDockerfile(t *testing.T) {
	df := string(readFile(t, "Dockerfile"))
	var froms []string
	var user string
	for _, line := range strings.Split(df, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "FROM" {
			// FROM [--platform=...] image [AS name]
			for _, w := range f[1:] {
				if !strings.HasPrefix(w, "--") {
					froms = append(froms, w)
					break
				}
			}
		}
		if len(f) >= 2 && f[0] == "USER" {
			user = f[1]
		}
	}
	if len(froms) != 2 || !strings.HasPrefix(froms[0], "golang:1.26") || froms[1] != "gcr.io/distroless/static-debian12" {
		t.Errorf("stages FROM %v, want golang:1.26 then gcr.io/distroless/static-debian12", froms)
	}
	if user != "0:0" {
		t.Errorf("USER %q, want 0:0 (BPF needs root, see the Dockerfile)", user)
	}
	for _, s := range []string{"CGO_ENABLED=0", "./cmd/forkwatch", "ENTRYPOINT"} {
		if !strings.Contains(df, s) {
			t.Errorf("Dockerfile lacks %q", s)
		}
	}
}

// dockerfileBuild returns the Dockerfile's RUN line with go build, its
// continuations joined.
func dockerfileBuild(t *testing.T) string {
	t.Helper()
	var build string
	lines := strings.Split(string(readFile(t, "Dockerfile")), "\n")
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		if !strings.HasPrefix(l, "RUN ") || !strings.Contains(l, "go build") {
			continue
		}
		build = strings.TrimPrefix(l, "RUN ")
		for strings.HasSuffix(build, "\\") && i+1 < len(lines) {
			i++
			build = strings.TrimSuffix(build, "\\") + " " + strings.TrimSpace(lines[i])
		}
	}
	if build == "" {
		t.Fatal("no RUN ... go build line in the Dockerfile")
	}
	return build
}

// The image is multi-arch by cross-compiling: the Go stage runs on the
// builder's platform and builds for the target's, and the final stage is the
// target's.
func TestDockerfileCrossCompiles(t *testing.T) {
	df := string(readFile(t, "Dockerfile"))
	var froms [][]string
	args := map[string]bool{}
	for _, line := range strings.Split(df, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "FROM":
			froms = append(froms, f[1:])
		case len(f) >= 2 && f[0] == "ARG" && len(froms) == 1:
			for _, a := range f[1:] {
				args[strings.SplitN(a, "=", 2)[0]] = true
			}
		}
	}
	if len(froms) != 2 || froms[0][0] != "--platform=$BUILDPLATFORM" || strings.HasPrefix(froms[1][0], "--platform") {
		t.Errorf("stages FROM %v: want the Go stage on --platform=$BUILDPLATFORM and the final stage on the target's", froms)
	}
	if !args["TARGETOS"] || !args["TARGETARCH"] {
		t.Errorf("the Go stage declares ARGs %v: want TARGETOS and TARGETARCH, which BuildKit sets from --platform", args)
	}
	build := dockerfileBuild(t)
	for _, s := range []string{"GOOS=${TARGETOS}", "GOARCH=${TARGETARCH}"} {
		if !strings.Contains(build, s) {
			t.Errorf("the go build line (%s) lacks %s", build, s)
		}
	}
}

// The image's binaries are what the Dockerfile's own go build command makes
// for each platform the image is built for: run here with a VERSION and each
// TARGETARCH, it makes a static binary for that machine, and the one for this
// machine says the version it was stamped with in --version (and so in
// forkwatch_build_info, from the same variable). test/vm runs the arm64 one
// in arm64 kernels (make test-vm, built with the Makefile's IMAGE_LDFLAGS).
func TestDockerfileBuildsEveryPlatform(t *testing.T) {
	build := dockerfileBuild(t)
	for _, tc := range []struct {
		arch    string
		machine elf.Machine
	}{{"amd64", elf.EM_X86_64}, {"arm64", elf.EM_AARCH64}} {
		t.Run(tc.arch, func(t *testing.T) {
			bin := filepath.Join(t.TempDir(), "forkwatch")
			cmdline := strings.NewReplacer("${VERSION}", "v9.8.7-test", "/out/forkwatch", bin,
				"${TARGETOS}", "linux", "${TARGETARCH}", tc.arch).Replace(build)
			cmd := exec.Command("sh", "-c", cmdline)
			cmd.Dir = ".." // the Dockerfile builds from the repository's root
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("the Dockerfile's build (%s): %v\n%s", cmdline, err, out)
			}
			f, err := elf.Open(bin)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if f.Machine != tc.machine {
				t.Errorf("built for %s: ELF machine %s, want %s", tc.arch, f.Machine, tc.machine)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Errorf("built for %s: dynamically linked; the image has no libc", tc.arch)
				}
			}
			if tc.arch != runtime.GOARCH {
				return
			}
			out, err := exec.Command(bin, "--version").CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "forkwatch v9.8.7-test" {
				t.Fatalf("forkwatch --version = %q, %v; want the version the Dockerfile stamped", out, err)
			}
		})
	}
}

// The arm64 binaries test/vm boots are linked as the image's are: the
// Makefile's IMAGE_LDFLAGS are the Dockerfile's -ldflags.
func TestMakefileBuildsAsTheImage(t *testing.T) {
	m := regexp.MustCompile(`-ldflags "([^"]*)"`).FindStringSubmatch(dockerfileBuild(t))
	if m == nil {
		t.Fatal("no -ldflags \"...\" in the Dockerfile's go build line")
	}
	want := strings.ReplaceAll(m[1], "${VERSION}", "$(VERSION)")
	var got string
	for _, l := range strings.Split(string(readFile(t, "../Makefile")), "\n") {
		if v, ok := strings.CutPrefix(l, "IMAGE_LDFLAGS"); ok {
			got = strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(v), ":?="))
		}
	}
	if got != want {
		t.Errorf("Makefile IMAGE_LDFLAGS = %q, want the Dockerfile's -ldflags %q", got, want)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
