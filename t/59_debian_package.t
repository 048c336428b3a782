# The Debian package (issue 12): scripts/package.sh builds libnginx-mod-http-sse_<version>_<arch>.deb
# the way Debian builds its nginx modules, apt installs it on this machine, and then
#  - the package holds what a libnginx-mod-* package holds: the .so in /usr/lib/nginx/modules
#    (linked with hiredis dynamically), modules-available/mod-http-sse.conf, the modules-enabled
#    link, and dependencies on the nginx ABI and on libhiredis;
#  - `nginx -t` passes with the stock /etc/nginx/nginx.conf plus one conf.d snippet of ours;
#  - the system nginx (/usr/sbin/nginx), started with a copy of the stock nginx.conf that has a
#    private pid file and logs, listens only on a free loopback port and includes only our snippet,
#    loads the packaged module through modules-enabled and carries an event from a publish to a
#    stream, byte for byte; it is stopped again by its pid.
# At the end the snippet is removed, and the package purged if it was not installed before the test,
# so the machine is left as it was (the purge is checked too: link and .so gone, `nginx -t` passes).
#
#   SSE_DEB=/path/libnginx-mod-http-sse_0.1.0_amd64.deb   test that package instead of building one
# Needs root (apt, /etc/nginx). Skipped in the sanitizer pass: the package is built with Debian's
# flags, whatever build the pass is about. Runs of this test on one machine take turns (a lock), as
# they share /etc/nginx and the installed package.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Cwd ();
use Fcntl qw(:flock);
use File::Temp qw(tempdir);
use Time::HiRes qw(sleep time);

BEGIN {
    plan skip_all => 'needs root: installs a package with apt and writes to /etc/nginx' if $> != 0;
    plan skip_all => 'the sanitizer pass: the package is built with Debian\'s own flags (the release pass tests it)'
        if $ENV{SSE_SANITIZED};
    plan skip_all => 'another nginx than Debian\'s (SSE_NGINX): the package is for Debian\'s nginx, tested in that leg'
        if $ENV{SSE_NGINX} && $ENV{SSE_NGINX} ne 'nginx';
}

use SSETest;
use SSEExpect qw(frame);

my $PKG = 'libnginx-mod-http-sse';
my $NGINX = '/usr/sbin/nginx';
my $ENABLED = '/etc/nginx/modules-enabled/50-mod-http-sse.conf';
my $AVAILABLE = '/usr/share/nginx/modules-available/mod-http-sse.conf';
my $SO = '/usr/lib/nginx/modules/ngx_http_sse_module.so';
my $dir = tempdir('sse-package-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $dir;

sub run_logged {
    my ($log, @cmd) = @_;
    my $out = `@cmd 2>&1`;
    my $rc = $? >> 8;
    open my $fh, '>>', $log or die $!;
    print $fh "\$ @cmd\n$out";
    close $fh;
    return ($rc, $out);
}

sub installed_version {
    my $v = `dpkg-query -W -f='\${db:Status-Status} \${Version}' $PKG 2>/dev/null`;
    return $v =~ /^installed (\S+)/ ? $1 : undef;
}

# The package: given, or built from this tree.
my $deb = $ENV{SSE_DEB};
if (defined $deb) {
    die "SSE_DEB=$deb: no such file\n" unless -f $deb;
    $deb = Cwd::abs_path($deb);    # apt takes a file for a package name unless it has a slash
} else {
    if (!`sh -c 'command -v dpkg-buildpackage'`) {
        run_logged("$dir/apt.log", 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev debhelper');
        plan skip_all => "dpkg-buildpackage is not installed and apt could not install it (see $dir/apt.log)"
            unless `sh -c 'command -v dpkg-buildpackage'`;
    }
    my $started = time;
    my ($rc, $out) = run_logged("$dir/package.log", "$SSETest::REPO/scripts/package.sh");
    is($rc, 0, 'scripts/package.sh builds the package') or die "no package:\n$out";
    ($deb) = $out =~ m{^(/\S+\.deb)\s*\z}m;
    note(sprintf 'built %s in %.0f s', $deb // '?', time - $started);
}
my $version = `dpkg-deb -f '$deb' Version`;
chomp $version;
my $arch = `dpkg --print-architecture`;
chomp $arch;
like($deb, qr{(^|/)\Q${PKG}_${version}_$arch\E\.deb$}, "the package is ${PKG}_<version>_$arch.deb");

# Its dependencies: the ABI that the installed nginx provides, and hiredis's library package.
my ($abi) = `dpkg-query -W -f='\${Provides}' nginx` =~ /(nginx-abi-[\w.~+-]+)/;
my $depends = `dpkg-deb -f '$deb' Depends`;
ok($abi && $depends =~ /(^|, )\Q$abi\E(,|$)/m, "Depends on the installed nginx's ABI ($abi)") or diag($depends);
like($depends, qr/(^|, )libhiredis[\d.]+ /, 'Depends on libhiredis, as dh_shlibdeps found it') or diag($depends);

# One run at a time on this machine: they share /etc/nginx and the package.
open my $lock, '>', '/run/lock/sse-package-test.lock' or die "lock: $!";
flock($lock, LOCK_EX) or die "flock: $!";

my $was_installed = installed_version();
my ($snippet, $master);

sub stop_nginx {
    return unless $master && kill 0, $master;
    kill 'QUIT', $master;
    for (1 .. 200) { last unless kill 0, $master; sleep 0.05 }
    kill 'KILL', $master if kill 0, $master;
    $master = undef;
}

sub clean_up {
    stop_nginx();
    # The snippet goes first: without the module, the stock configuration would not load it.
    unlink $snippet if $snippet && -e $snippet;
    $snippet = undef;
    if (!defined $was_installed && defined installed_version()) {
        run_logged("$dir/apt.log", "DEBIAN_FRONTEND=noninteractive apt-get purge -y -o DPkg::Lock::Timeout=300 $PKG");
    }
}
$SIG{INT} = $SIG{TERM} = sub { clean_up(); exit 1 };
END { local $?; clean_up() }

my ($rc, $out) = run_logged("$dir/apt.log",
    "DEBIAN_FRONTEND=noninteractive apt-get install -y --reinstall --allow-downgrades -o DPkg::Lock::Timeout=300 '$deb'");
is($rc, 0, 'apt-get installs the package') or die "not installed:\n$out";
is(installed_version(), $version, "$PKG $version is installed");
note(defined $was_installed ? "$PKG $was_installed was installed before the test: it stays, at $version"
                            : "$PKG was not installed before the test: it is purged at the end");

ok(-f $SO, "the module is $SO");
like(`readelf -d $SO`, qr/NEEDED.*\[libhiredis\.so\.[\d.]+\]/, 'the module links hiredis dynamically');
is(do { local (@ARGV, $/) = $AVAILABLE; <> }, "load_module modules/ngx_http_sse_module.so;\n",
   "$AVAILABLE loads it");
is(readlink($ENABLED), $AVAILABLE, "$ENABLED links to it");

# A server of ours in conf.d, on a free loopback port.
my $port = SSETest::free_port();
$snippet = "/etc/nginx/conf.d/sse-package-test-$$.conf";
open my $fh, '>', $snippet or die "$snippet: $!";
print $fh <<"CONF";
# Written by t/59_debian_package.t, removed when it ends.
server {
    listen 127.0.0.1:$port;
    location = /events {
        sse_subscribe \$arg_topics;
        sse_retry 3s;
    }
    location = /internal/publish {
        allow 127.0.0.1; deny all;
        sse_publish \$arg_topic;
    }
}
CONF
close $fh;

($rc, $out) = run_logged("$dir/nginx-t.log", "$NGINX -t");
is($rc, 0, 'nginx -t passes: the stock nginx.conf loads the module through modules-enabled, and our snippet')
    or diag($out);

# The stock nginx.conf with a private pid file and logs, our snippet as its only server (the stock
# default site would take port 80); its modules-enabled include stays as it is.
my $stock = do { local (@ARGV, $/) = '/etc/nginx/nginx.conf'; <> };
my $conf = $stock;
my @edits = (
    ['pid',                  qr{^pid\s+\S+;$}m,                                  "pid $dir/nginx.pid;"],
    ['error_log',            qr{^error_log\s+\S+;$}m,                            "error_log $dir/error.log info;"],
    ['access_log',           qr{^\s*access_log\s+\S+;$}m,                        "\taccess_log $dir/access.log;"],
    ['conf.d include',       qr{^\s*include /etc/nginx/conf\.d/\*\.conf;$}m,       "\tinclude $snippet;"],
    ['sites-enabled include', qr{^\s*include /etc/nginx/sites-enabled/\*;$}m,     ''],
);
for (@edits) {
    my ($what, $re, $line) = @$_;
    my $n = () = $conf =~ /$re/g;
    is($n, 1, "the stock nginx.conf has one $what line") or next;
    $conf =~ s/$re/$line/;
}
like($conf, qr{^include /etc/nginx/modules-enabled/\*\.conf;$}m, 'the copy includes modules-enabled');
open $fh, '>', "$dir/nginx.conf" or die $!;
print $fh $conf;
close $fh;

($rc, $out) = run_logged("$dir/nginx.log", "$NGINX -c $dir/nginx.conf -e $dir/error.log");
is($rc, 0, "the system nginx starts on port $port") or die "nginx did not start:\n$out";
for (1 .. 200) { last if -s "$dir/nginx.pid"; sleep 0.05 }
$master = do { local (@ARGV, $/) = "$dir/nginx.pid"; <> };
chomp $master;
ok(SSETest::wait_until(sub { IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) }, 10), 'it listens');
like(do { local (@ARGV, $/) = "/proc/$master/maps"; <> }, qr{\Q$SO\E}, "it has loaded $SO");

my $s = SSEClient->new(port => $port, path => '/events?topics=pkg');
is($s->status, 200, 'a stream opens');
is($s->header('Content-Type'), 'text/event-stream', 'as text/event-stream');
is($s->wait_body(length ":ok\nretry: 3000\n\n"), ":ok\nretry: 3000\n\n", 'with a comment and retry');
my $r = SSETest->request('POST', '/internal/publish?topic=pkg&event=installed', port => $port,
                         body => '{"from":"the package"}');
is($r->{status}, 202, 'a publish is accepted') or diag($r->{raw});
my ($id) = $r->{body} =~ /"id":"(\d+)"/;
is($r->{body}, qq({"id":"$id","events":1,"subscribers":1}\n), 'and reaches one subscriber');
$s->events(1);
is($s->body, ":ok\nretry: 3000\n\n" . frame($id, '{"from":"the package"}', 'installed'), 'the stream has the exact bytes');
$s->close;

my $pid = $master;
stop_nginx();
ok(!kill(0, $pid) && !-e "$dir/nginx.pid", 'nginx stopped');
my @bad = grep { /\[(alert|emerg|crit)\]/ } split /\n/, (do { local (@ARGV, $/) = "$dir/error.log"; <> } // '');
ok(!@bad, 'error.log has no alert, emerg or crit line') or diag(join "\n", @bad);

unlink $snippet;
$snippet = undef;
if (!defined $was_installed) {
    ($rc, $out) = run_logged("$dir/apt.log", "DEBIAN_FRONTEND=noninteractive apt-get purge -y -o DPkg::Lock::Timeout=300 $PKG");
    is($rc, 0, 'apt-get purges the package') or diag($out);
    ok(!-e $SO && !-e $AVAILABLE && !-l $ENABLED && !-l "$ENABLED.removed", 'the module, its conf and its link are gone');
    ($rc, $out) = run_logged("$dir/nginx-t.log", "$NGINX -t");
    is($rc, 0, 'nginx -t passes with the stock configuration again') or diag($out);
}

done_testing;
