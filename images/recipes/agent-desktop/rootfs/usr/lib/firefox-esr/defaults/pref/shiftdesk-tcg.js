// ShiftDesk: default prefs for a GPU-less guest under TCG (not a lock-down: the policies in
// /etc/firefox-esr/policies/policies.json do that). Software WebRender straight away, no GPU or
// video-decode probing, no preallocated spare content process during startup.
pref("gfx.webrender.software", true);
pref("gfx.webrender.software.opengl", false);
pref("gfx.x11-egl.force-disabled", true);
pref("gfx.canvas.accelerated", false);
pref("layers.gpu-process.enabled", false);
pref("media.hardware-video-decoding.enabled", false);
pref("media.ffmpeg.vaapi.enabled", false);
pref("dom.ipc.processPrelaunch.enabled", false);
pref("toolkit.startup.max_resumed_crashes", -1);
// An instant clone's Firefox started in a template that had no network; the clone's NIC comes
// later. Firefox should not follow the OS link state it saw then (manage-offline-status), and
// needs no connectivity check of its own (the host decides what is reachable).
pref("network.manage-offline-status", false);
pref("network.connectivity-service.enabled", false);
