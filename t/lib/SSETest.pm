package SSETest;

# Our own small harness in the shape of nginx-tests: each test writes an nginx.conf, starts a
# real nginx (2+ workers) with the built module on a free loopback port, talks to it over real
# sockets, and at teardown fails if error.log holds [alert], [emerg], [crit] or a sanitizer report.
#
#   my $t = SSETest->new(http => '...', server => '...')->start;
#   my $s = $t->subscribe('/events?topics=a');      # an SSEClient, headers already read
#   my $r = $t->publish('/pub?topic=a', 'hello');    # decoded JSON of the 202
#   my @ev = $s->events(1);                          # [{id, event, data}]
#   my $e = $t->publish_event('/pub?topic=a', 'hi'); # [id, its exact frame, the reply]
#   my $r = $t->resume('/events?topics=a', $e->[0]); # a stream sending Last-Event-ID
#   $t->finish;                                      # stops nginx, checks error.log

use strict;
use warnings;

use File::Temp qw(tempdir);
use File::Path ();
use Scalar::Util ();
use IO::Socket::INET;
use IO::Select;
use JSON::PP;
use Test::More;
use Time::HiRes qw(sleep time);
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use POSIX ();

use SSEClient;
use SSEExpect ();

our @ALL;    # every harness object, weakly held, for the END block
our $REPO = abs_path(dirname(__FILE__) . '/../..');

sub module_path {
    return $ENV{SSE_MODULE} // "$REPO/build/ngx_http_sse_module.so";
}

# The nginx under test: SSE_NGINX (scripts/test.sh's version matrix), else the nginx in PATH.
sub nginx_binary {
    return $ENV{SSE_NGINX} // 'nginx';
}

# What `nginx -V` says of the nginx under test: {version => '1.31.4', version_number => 1031004,
# configure => the configure arguments, modules => {http_v3 => 1, ...} (every --with-X_module)}.
my $nginx_info;
sub nginx_info {
    return $nginx_info if $nginx_info;
    my $bin = nginx_binary();
    my $v = `$bin -V 2>&1`;
    die "$bin -V failed: $v" if $?;
    my ($version) = $v =~ m{nginx version: nginx/(\d+\.\d+\.\d+)} or die "no version in: $v";
    my ($args) = $v =~ /^configure arguments: (.*)$/m;
    my ($maj, $min, $pat) = split /\./, $version;
    $args //= '';
    my %modules = map { $_ => 1 } $args =~ /--with-(\w+?)_module\b/g;
    return $nginx_info = {version => $version, version_number => $maj * 1000000 + $min * 1000 + $pat,
                          configure => $args, modules => \%modules};
}

sub free_port {
    for (1 .. 50) {
        my $port = 20000 + int(rand(30000));
        my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port, Listen => 1, ReuseAddr => 1);
        next unless $s;
        close $s;
        return $port;
    }
    die "no free port";
}

# Options: workers (2), http (text inside http{}), server (text inside server{}), main (text at
# the top level), events (text inside events{}), extra_ports (how many more free ports to
# allocate: $t->port(1) ..., %%PORT1%% in the text), spread (a second server with the same
# locations on $t->port(1), listening with reuseport so the kernel spreads its connections over
# the workers; implies one extra port).
# Set SSE_KEEP=1 to keep the test directories.
sub new {
    my ($class, %o) = @_;
    my $self = bless {%o}, $class;
    $self->{workers} //= 2;
    $o{extra_ports} = 1 if $o{spread} && !$o{extra_ports};
    # Removed by DESTROY, after nginx is stopped (File::Temp's own cleanup would run first).
    $self->{dir} = tempdir('sse-test-XXXXXX', TMPDIR => 1, CLEANUP => 0);
    # Workers run as an unprivileged user and buffer large request bodies in here.
    chmod 0755, $self->{dir};
    $self->{ports} = [map { free_port() } 0 .. ($o{extra_ports} // 0)];
    mkdir "$self->{dir}/logs";
    push @ALL, $self;
    Scalar::Util::weaken($ALL[-1]);
    $self->write_conf;
    return $self;
}

sub dir { $_[0]{dir} }
sub port { my ($self, $i) = @_; return $self->{ports}[$i // 0] }

sub conf_text {
    my ($self) = @_;
    my $port = $self->port;
    my $module = module_path();
    my $main = $self->{main} // '';
    my $events = $self->{events} // '';
    my $http = $self->{http} // '';
    my $server = $self->{server} // '';
    if ($self->{spread}) {
        $http .= "    server {\n        listen 127.0.0.1:%%PORT1%% reuseport;\n$server\n    }\n";
    }
    my $text = <<"CONF";
load_module $module;
worker_processes $self->{workers};
error_log $self->{dir}/logs/error.log info;
pid $self->{dir}/logs/nginx.pid;
$main
events { worker_connections 4096; $events }
http {
    access_log off;
    client_body_temp_path $self->{dir}/body;
    proxy_temp_path $self->{dir}/proxy;
    fastcgi_temp_path $self->{dir}/fastcgi;
    uwsgi_temp_path $self->{dir}/uwsgi;
    scgi_temp_path $self->{dir}/scgi;
$http
    server {
        listen 127.0.0.1:$port;
$server
    }
}
CONF
    $text =~ s/%%PORT(\d*)%%/$self->{ports}[$1 || 0]/ge;
    $text =~ s/%%DIR%%/$self->{dir}/g;
    return $text;
}

sub write_conf {
    my ($self, %changes) = @_;
    @$self{keys %changes} = values %changes;
    open my $fh, '>', "$self->{dir}/nginx.conf" or die $!;
    print $fh $self->conf_text;
    close $fh;
    return $self;
}

sub nginx_cmd {
    my ($self, @args) = @_;
    my @pre;
    if ($ENV{SSE_LD_PRELOAD}) {
        @pre = ('env', "LD_PRELOAD=$ENV{SSE_LD_PRELOAD}");
    }
    return (@pre, nginx_binary(), '-p', $self->{dir}, '-c', "$self->{dir}/nginx.conf", @args);
}

# nginx -t: returns (exit code, output).
sub test_conf {
    my ($self) = @_;
    my @cmd = $self->nginx_cmd('-t');
    my $out = `@cmd 2>&1`;
    return ($? >> 8, $out);
}

sub start {
    my ($self) = @_;
    my @cmd = $self->nginx_cmd();
    my $out = `@cmd 2>&1`;
    die "nginx failed to start: $out" if $?;
    $self->{started} = 1;
    $self->wait_for_port;
    $self->{master} = $self->master_pid;
    $self->wait_for_workers($self->{workers});
    return $self;
}

sub wait_for_port {
    my ($self) = @_;
    for (1 .. 100) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $self->port, Proto => 'tcp');
        if ($s) { close $s; return 1 }
        sleep 0.05;
    }
    die "nginx is not listening on " . $self->port;
}

sub master_pid {
    my ($self) = @_;
    open my $fh, '<', "$self->{dir}/logs/nginx.pid" or return;
    my $pid = <$fh>;
    chomp $pid;
    return $pid;
}

# Worker processes of this nginx (not those shutting down unless $all).
sub worker_pids {
    my ($self, $all) = @_;
    my $master = $self->master_pid or return ();
    my @pids;
    for my $stat (glob "/proc/[0-9]*/stat") {
        open my $fh, '<', $stat or next;
        my $line = <$fh> // next;
        close $fh;
        my ($pid, $ppid) = $line =~ /^(\d+) \(.*\) \S (\d+)/ or next;
        next unless $ppid == $master;
        if (!$all) {
            open my $c, '<', "/proc/$pid/cmdline" or next;
            my $cmd = <$c> // '';
            next if $cmd =~ /shutting down/;
        }
        push @pids, $pid;
    }
    my @sorted = sort { $a <=> $b } @pids;
    return @sorted;
}

sub wait_for_workers {
    my ($self, $n) = @_;
    for (1 .. 200) {
        return 1 if $self->worker_pids >= $n;
        sleep 0.05;
    }
    die "nginx workers did not start";
}

sub reload {
    my ($self) = @_;
    my @before = $self->worker_pids;
    my @cmd = $self->nginx_cmd('-s', 'reload');
    my $out = `@cmd 2>&1`;
    die "reload failed: $out" if $?;
    # Wait until a full set of new workers runs.
    for (1 .. 200) {
        my %old = map { $_ => 1 } @before;
        my @new = grep { !$old{$_} } $self->worker_pids;
        return $self if @new >= $self->{workers};
        sleep 0.05;
    }
    die "reload: new workers did not start";
}

sub stop {
    my ($self) = @_;
    return unless $self->{started};
    $self->{started} = 0;
    my $master = $self->master_pid // $self->{master};
    kill 'QUIT', $master if $master;
    for (1 .. 200) {
        last unless $master && kill 0, $master;
        sleep 0.05;
    }
    if ($master && kill 0, $master) {
        kill 'KILL', $master, $self->worker_pids(1);
        diag("nginx did not quit gracefully within 10 s");
    }
}

sub error_log {
    my ($self) = @_;
    open my $fh, '<', "$self->{dir}/logs/error.log" or return '';
    local $/;
    return <$fh>;
}

# Lines that mean a defect: checked at teardown of every test.
sub bad_log_lines {
    my ($self) = @_;
    my @bad = grep { /\[(alert|emerg|crit)\]|AddressSanitizer|runtime error:|LeakSanitizer/ } split /\n/, $self->error_log;
    # Lines a test provoked on purpose and declared with allow_log.
    for my $re (@{ $self->{allowed} || [] }) {
        @bad = grep { !/$re/ } @bad;
    }
    return @bad;
}

sub allow_log { my ($self, $re) = @_; push @{ $self->{allowed} }, $re; }

# Stops nginx and checks its log: every test ends with this before done_testing.
sub finish {
    my ($self) = @_;
    $self->stop;
    my @bad = $self->bad_log_lines;
    ok(!@bad, 'error.log has no alert, emerg, crit or sanitizer line') or diag(join "\n", @bad);
    $self->{checked} = 1;
}

sub DESTROY {
    my ($self) = @_;
    local $?;
    $self->stop;
    File::Path::remove_tree($self->{dir}) if $self->{dir} && !$ENV{SSE_KEEP};
}

# A test that dies still stops its nginx.
END { local $?; $_->stop for grep { defined } @ALL; }

# One HTTP/1.1 request with Connection: close. Returns {status, headers (lowercased keys), body}.
sub request {
    my ($self, $method, $path, %o) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $o{port} // $self->port, Proto => 'tcp')
        or die "connect: $!";
    my $body = $o{body} // '';
    my $req = "$method $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
    my %h = %{ $o{headers} || {} };
    for my $k (sort keys %h) { $req .= "$k: $h{$k}\r\n" }
    $req .= "Content-Length: " . length($body) . "\r\n" if length($body) || $method =~ /^(POST|PUT)$/;
    $req .= "\r\n" . $body;
    $s->print($req);
    # Read until the server closes, but never hang a test on an answer that does not end.
    my $resp = '';
    my $sel = IO::Select->new($s);
    my $end = time + ($o{timeout} // 10);
    while (time < $end) {
        last unless $sel->can_read($end - time);
        my $n = sysread($s, my $chunk, 65536);
        last unless $n;
        $resp .= $chunk;
    }
    close $s;
    return parse_response($resp);
}

sub parse_response {
    my ($resp) = @_;
    my ($head, $body) = split /\r\n\r\n/, $resp, 2;
    $body //= '';
    my @lines = split /\r\n/, $head // '';
    my $status_line = shift @lines // '';
    my ($status) = $status_line =~ m{^HTTP/\d\.\d (\d+)};
    my %headers;
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
        $headers{lc $k} = exists $headers{lc $k} ? "$headers{lc $k}, $v" : $v;
    }
    if (($headers{'transfer-encoding'} // '') =~ /chunked/i) {
        my $decoded = '';
        while ($body =~ s/^([0-9a-fA-F]+)\r\n//) {
            my $n = hex $1;
            last if $n == 0;
            $decoded .= substr($body, 0, $n, '');
            $body =~ s/^\r\n//;
        }
        $body = $decoded;
    }
    return {status => $status // 0, headers => \%headers, body => $body, raw => $resp};
}

# POST to a publish location. Returns the decoded JSON of a 202; dies on another status
# (use request() to look at refusals).
sub publish {
    my ($self, $path, $data, %o) = @_;
    my $r = $self->request($o{method} // 'POST', $path, body => $data, headers => $o{headers});
    die "publish to $path: $r->{status} $r->{body}" unless $r->{status} == 202;
    return decode_json($r->{body});
}

sub get_json {
    my ($self, $path) = @_;
    my $r = $self->request('GET', $path);
    die "GET $path: $r->{status} $r->{body}" unless $r->{status} == 200;
    return decode_json($r->{body});
}

# The sse_stats JSON (location /stats unless named).
sub stats {
    my ($self, $path) = @_;
    return $self->get_json($path // '/stats');
}

# Polls the stats until every key of $want has its value (or $timeout seconds pass); returns
# the last stats read.
sub stats_until {
    my ($self, $want, $timeout, $path) = @_;
    my $st;
    wait_until(sub {
        $st = $self->stats($path);
        for my $k (keys %$want) { return 0 unless $st->{$k} == $want->{$k} }
        return 1;
    }, $timeout // 5);
    return $st;
}

# Opens a stream and reads its response headers. Options: headers, http10, port.
sub subscribe {
    my ($self, $path, %o) = @_;
    return SSEClient->new(port => $o{port} // $self->port, path => $path, %o);
}

# subscribe() resuming from $last_id: sent as Last-Event-ID (no header when undef) along with $o{headers}.
sub resume {
    my ($self, $path, $last_id, %o) = @_;
    my %h = %{ $o{headers} || {} };
    $h{'Last-Event-ID'} = $last_id if defined $last_id;
    return $self->subscribe($path, %o, headers => \%h);
}

# Publishes $data, named $name when defined, to $path (e.g. /pub?topic=a): [id, its exact frame, the reply].
sub publish_event {
    my ($self, $path, $data, $name) = @_;
    my $r = $self->publish($path . (defined $name ? "&event=$name" : ''), $data);
    return [$r->{id}, SSEExpect::frame($r->{id}, $data, $name), $r];
}

# GET on a publish location ($path, e.g. /pub?topic=a): the decoded JSON of a 200, else {status => N}.
sub channel_state {
    my ($self, $path) = @_;
    my $r = $self->request('GET', $path);
    return {status => $r->{status}} unless $r->{status} == 200;
    return eval { decode_json($r->{body}) } // {status => 200, body => $r->{body}};
}

# Forks a publisher: POSTs ($label, $path, $body) = $o{next}->($n) for n = 0, 1, ... until it returns
# nothing, sleeping $o{pause} s after each, logging "<label> <status> <id> <time>" to $o{log}; returns its pid.
sub start_publisher {
    my ($self, %o) = @_;
    my $pid = fork // die "fork: $!";
    return $pid if $pid;
    open my $fh, '>', $o{log} or POSIX::_exit(2);
    $fh->autoflush(1);
    for (my $n = 0; ; $n++) {
        my ($label, $path, $body) = $o{next}->($n) or last;
        my $r = eval { $self->request('POST', $path, body => $body) };
        my $status = $r ? $r->{status} : 0;
        my ($id) = $r ? ($r->{body} =~ /"id":"(\d+)"/) : ();
        printf $fh "%s %d %s %.6f\n", $label, $status, $id // '-', time;
        sleep $o{pause} if $o{pause};
    }
    close $fh;
    POSIX::_exit(0);    # never run the parent's destructors (they would stop nginx)
}

# The lines a start_publisher() child logged so far: ({n => label, status, id, when}, ...).
sub read_publisher_log {
    my ($log) = @_;
    open my $fh, '<', $log or return ();
    my @l;
    while (<$fh>) {
        my ($n, $status, $id, $when) = split;
        push @l, {n => $n, status => $status, id => $id, when => $when};
    }
    return @l;
}

# Opens one stream per path on the reuseport listener (spread => 1) so that both workers hold
# some: the kernel picks the worker, so a try that lands all on one worker is closed and redone
# (up to 20 tries). Returns the streams, in the order of the paths. A path may be [path, options
# of subscribe()] (headers => {...}).
sub subscribe_spread {
    my ($self, @paths) = @_;
    my $base = $self->stats->{subscribers};
    for (1 .. 20) {
        my @s = map { ref $_ ? $self->subscribe($_->[0], @$_[1 .. $#$_], port => $self->port(1))
                             : $self->subscribe($_, port => $self->port(1)) } @paths;
        my $st = $self->stats_until({subscribers => $base + @s}, 5);
        return @s if 2 <= grep { $_->{subscribers} > 0 } @{ $st->{workers} };
        $_->close for @s;
        $self->stats_until({subscribers => $base}, 5);
    }
    die "subscribe_spread: the streams never landed on two workers";
}

# Waits until code returns true (polling), up to $timeout seconds.
sub wait_until {
    my ($code, $timeout) = @_;
    my $end = time + ($timeout // 5);
    while (time < $end) {
        return 1 if $code->();
        sleep 0.02;
    }
    return $code->();
}

# Runs each case of @$cases (hashes with a name) as the subtest "(n) name", calling
# $run->($n, $case); a case that dies fails with its error, and $after_death->() cleans up what
# it left. SSE_CASES=3,7 runs those cases only.
sub run_cases {
    my ($cases, $run, $after_death) = @_;
    my %only = map { $_ => 1 } split /,/, $ENV{SSE_CASES} // '';
    for my $n (0 .. $#$cases) {
        next if %only && !$only{$n};
        my $c = $cases->[$n];
        my $t_case = time;
        subtest "($n) $c->{name}" => sub {
            my $ok = eval { $run->($n, $c); 1 };
            if (!$ok) {
                my $err = $@;
                fail('the case ran to its end');
                diag("died: $err");
                $after_death->() if $after_death;
            }
            note(sprintf '(%d) took %.1f s', $n, time - $t_case);
        };
    }
}

1;
