package FakeRedis;

# A fake Redis server for the tests of a misbehaving server. It listens on a loopback port (in a
# forked child running one select loop), speaks enough RESP to take a node's link through its
# handshake (AUTH, SELECT, CLIENT SETNAME, FUNCTION LOAD on the command connection; SUBSCRIBE of
# the node's private and control channels on the subscribe connection) and its steady state
# (SUBSCRIBE and UNSUBSCRIBE of channels, FCALL sse_history, PUBLISH, PING), and misbehaves as
# asked on one kind of command: it sends the given bytes in place of the reply (or after it), then
# closes the connection, falls silent or goes on serving.
#
# It never answers FCALL sse_publish (nor anything after it on that connection, since replies
# keep the order of the commands), so a node keeps such an event queued and sends it again to the
# real Redis that replaces the fake; unless it is a hub (hub => 1): then it keeps each channel's
# history and delivers publishes to the subscribers as Redis does.
# Everything it receives and does is logged (fake.log in its directory): log_text for a diag.
#
#   my $fake = FakeRedis->new(port => $port, on => 'first', send => "+OK\r\n" x 4);
#   my $fake = FakeRedis->new(port => $port, on => 'FCALL sse_publish', send => "*-7\r\n", then => 'close');
#   my $fake = FakeRedis->new(port => $port, on => 'channel SUBSCRIBE', after_reply => 1, send => $bytes);
#   $fake->misbehaved;     # how many times it misbehaved so far
#   $fake->connections;    # connections accepted so far
#   $fake->received(qr/^SUBSCRIBE sse:a$/);   # commands received so far that match
#   $fake->stop;           # closes everything: the port is free again
#
# on (when to misbehave):
#   'accept'             as soon as a connection is accepted, before any command
#   'first'              the first command of each connection
#   'every'              every command
#   'steady'             every command after the handshake (anything but AUTH, SELECT, CLIENT,
#                        HELLO, FUNCTION and the SUBSCRIBE of the node's own channels)
#   'node SUBSCRIBE'     the SUBSCRIBE of the node's own channels (names holding '#')
#   'channel SUBSCRIBE'  a SUBSCRIBE or PSUBSCRIBE of a stream's channel
#   a command's words    'CLIENT SETNAME', 'FUNCTION LOAD', 'FCALL sse_publish', 'FCALL sse_history',
#                        'PING', 'AUTH', ... (case-insensitive, the command's first words)
# send: bytes, or a code ref given the command's words (an array ref) returning them.
# after_reply: send them after the normal reply instead of in its place.
# then: 'serve' (default), 'close' (once the bytes are written) or 'silence' (read and log,
#       never answer again on that connection).
#
# Sentinel mode (sentinel => 1): a fake Redis Sentinel for t/67. It answers SENTINEL
# get-master-addr-by-name with whatever bytes the test set last (valid RESP or not), and takes
# SUBSCRIBE +switch-master as a sentinel does; the test can push any bytes to the connections
# subscribed to +switch-master. The test talks to the child through files in the fake's directory.
#   my $s = FakeRedis->new(port => $port, sentinel => 1);
#   $s->master_reply(FakeRedis::address_reply('127.0.0.1', $redis->port));   # or any bytes
#   $s->master_reply(undef);          # from now on, a connection asking where the primary is
#                                     # gets no answer, nor anything else on it
#   $s->push_to_watchers($bytes);     # sent as is to every connection subscribed to +switch-master
#   $s->pushed;                       # how many pushes went out so far

use strict;
use warnings;

use File::Temp qw(tempdir);
use File::Path ();
use Scalar::Util ();
use IO::Socket::INET;
use IO::Select;
use Errno qw(EAGAIN EWOULDBLOCK EINTR);
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(sleep time);

our @ALL;    # every fake started, weakly held, for the END block

sub new {
    my ($class, %o) = @_;
    my $self = bless {%o}, $class;
    die "FakeRedis: a port is needed" unless $self->{port};
    $self->{on} //= 'never';
    $self->{then} //= 'serve';
    $self->{send} //= '';
    $self->{dir} = tempdir('sse-fakeredis-XXXXXX', TMPDIR => 1, CLEANUP => 0);
    $self->{log} = "$self->{dir}/fake.log";
    # Listening before new() returns: a node started next finds the port open.
    my $listen;
    for (1 .. 50) {
        $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $self->{port}, Listen => 64,
                                        ReuseAddr => 1, Proto => 'tcp');
        last if $listen;
        sleep 0.05;
    }
    die "FakeRedis: cannot listen on 127.0.0.1:$self->{port}: $!" unless $listen;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        # The child never runs the test's END blocks or destructors.
        $SIG{TERM} = sub { POSIX::_exit(0) };
        $SIG{PIPE} = 'IGNORE';
        # Sockets the test has open (streams, clients) must not stay open in here.
        my $keep = fileno $listen;
        POSIX::close($_) for grep { $_ != $keep } 3 .. 255;
        eval { $self->serve($listen) };
        if ($@) {
            if (open my $fh, '>>', $self->{log}) { print $fh "FAKE DIED: $@\n" }
        }
        POSIX::_exit(0);
    }
    close $listen;
    $self->{pid} = $pid;
    push @ALL, $self;
    Scalar::Util::weaken($ALL[-1]);
    return $self;
}

sub port { $_[0]{port} }
sub dir { $_[0]{dir} }

sub log_text {
    my ($self) = @_;
    open my $fh, '<', $self->{log} or return '';
    local $/;
    return <$fh> // '';
}

# The last $n lines of the log (default 40), for a diag.
sub log_tail {
    my ($self, $n) = @_;
    my @l = split /\n/, $self->log_text;
    splice @l, 0, @l - ($n // 40) if @l > ($n // 40);
    return join "\n", @l;
}

sub misbehaved {
    my @l = grep { / MISBEHAVED / } split /\n/, $_[0]->log_text;
    return scalar @l;
}

sub connections {
    my @l = grep { / accepted$/ } split /\n/, $_[0]->log_text;
    return scalar @l;
}

# The commands received so far (as logged: words joined by spaces) that match $re.
sub received {
    my ($self, $re) = @_;
    my @c = map { /^\S+ #\d+ < (.*)$/ ? $1 : () } split /\n/, $self->log_text;
    return grep { $_ =~ $re } @c;
}

# Sentinel mode: the answer to SENTINEL get-master-addr-by-name from now on (undef: silence).
# Written to a new file and renamed, so the child never reads half of it.
sub master_reply {
    my ($self, $bytes) = @_;
    my $f = "$self->{dir}/master-reply";
    if (!defined $bytes) {
        unlink $f;
        open my $fh, '>', "$self->{dir}/master-silent" or die $!;
        return;
    }
    open my $fh, '>', "$f.new" or die "$f.new: $!";
    binmode $fh;
    print $fh $bytes;
    close $fh or die $!;
    rename "$f.new", $f or die $!;
    unlink "$self->{dir}/master-silent";
}

# Sentinel mode: $bytes to every connection subscribed to +switch-master (the child polls for
# them every 50 ms); returns once the child has taken them.
sub push_to_watchers {
    my ($self, $bytes) = @_;
    my $f = "$self->{dir}/push";
    open my $fh, '>', "$f.new" or die "$f.new: $!";
    binmode $fh;
    print $fh $bytes;
    close $fh or die $!;
    rename "$f.new", $f or die $!;
    my $end = time + 5;
    sleep 0.02 while -e $f && time < $end;
    die "FakeRedis: the child did not take the push" if -e $f;
}

sub pushed {
    my @l = grep { / > PUSHED / } split /\n/, $_[0]->log_text;
    return scalar @l;
}

# A sentinel's answer naming a primary: [host, port] as two bulk strings.
sub address_reply {
    my ($host, $port) = @_;
    return "*2\r\n" . bulk($host) . bulk($port);
}

sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    $self->{pid} = undef;
    kill 'TERM', $pid;
    my $end = time + 5;
    while (time < $end) {
        return $self if waitpid($pid, POSIX::WNOHANG()) == $pid;
        sleep 0.02;
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
    return $self;
}

sub DESTROY {
    my ($self) = @_;
    local ($?, $!, $@);
    $self->stop;
    File::Path::remove_tree($self->{dir}) if $self->{dir} && !$ENV{SSE_KEEP};
}

END {
    local ($?, $!, $@);
    $_->stop for grep { defined } @ALL;
}

# ---- the child: one select loop over the listening socket and every connection ----------------

my $T0;
my $LOG;
my %CONNS;          # by connection number
my %SUBSCRIBERS;    # pub/sub channel => {connection number => 1}
my %HISTORY;        # key => [entry, ...] (a hub only)
my $JSON = JSON::PP->new->latin1->canonical->allow_nonref;

sub note {
    my ($conn, $text) = @_;
    printf $LOG "%.3f #%s %s\n", time - $T0, $conn ? $conn->{n} : '-', $text;
}

# A word as logged: printable, short.
sub shown {
    my ($w) = @_;
    return '<function library, ' . length($w) . ' bytes>' if $w =~ /^#!lua/;
    my $s = length($w) > 80 ? substr($w, 0, 80) . '...(' . length($w) . ' bytes)' : $w;
    $s =~ s/\r/\\r/g;
    $s =~ s/\n/\\n/g;
    $s =~ s/([^\x20-\x7e])/sprintf '\\x%02x', ord $1/ge;
    return $s;
}

sub serve {
    my ($self, $listen) = @_;
    $T0 = time;
    open $LOG, '>>', $self->{log} or die "fake.log: $!";
    $LOG->autoflush(1);
    note(undef, "listening on 127.0.0.1:$self->{port}; on '$self->{on}', then $self->{then}"
                . ($self->{after_reply} ? ', after the reply' : '') . ($self->{hub} ? ', a hub' : ''));
    $listen->blocking(0);
    my $next = 1;
    while (1) {
        my $rs = IO::Select->new($listen, map { $_->{sock} } grep { !$_->{closing} } values %CONNS);
        my $ws = IO::Select->new(map { $_->{sock} } grep { length $_->{out} } values %CONNS);
        my ($r, $w) = IO::Select->select($rs, $ws, undef, $self->{sentinel} ? 0.05 : 1);
        $self->take_push if $self->{sentinel};
        my %by_fd = map { fileno($_->{sock}) => $_ } values %CONNS;
        for my $s (@{ $r || [] }) {
            if ($s == $listen) {
                my $sock = $listen->accept or next;
                $sock->blocking(0);
                my $conn = {n => $next++, sock => $sock, in => '', out => '', commands => 0, state => 'serve'};
                $CONNS{ $conn->{n} } = $conn;
                note($conn, 'accepted');
                $self->misbehave($conn, []) if $self->{on} eq 'accept';
                next;
            }
            my $conn = $by_fd{ fileno $s } or next;
            my $got = sysread($s, my $buf, 65536);
            if (!defined $got) {
                next if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
                drop($conn, "read failed: $!");
                next;
            }
            if ($got == 0) {
                drop($conn, 'closed by the client');
                next;
            }
            $conn->{in} .= $buf;
            $self->take_input($conn);
        }
        for my $s (@{ $w || [] }) {
            my $conn = $by_fd{ fileno $s } or next;
            flush($conn);
        }
        for my $conn (grep { $_->{closing} && !length $_->{out} } values %CONNS) {
            drop($conn, 'closed by the fake');
        }
    }
}

sub drop {
    my ($conn, $why) = @_;
    return unless $CONNS{ $conn->{n} };
    note($conn, $why);
    # shutdown first: the FIN goes out even if another handle still refers to the socket.
    shutdown($conn->{sock}, 2);
    close $conn->{sock};
    delete $CONNS{ $conn->{n} };
    delete $_->{ $conn->{n} } for values %SUBSCRIBERS;
}

sub flush {
    my ($conn) = @_;
    while (length $conn->{out}) {
        my $n = syswrite($conn->{sock}, $conn->{out}, 65536);
        if (!defined $n) {
            return if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
            my $left = length $conn->{out};
            $conn->{out} = '';
            drop($conn, "write failed with $left bytes unsent: $!");
            return;
        }
        substr($conn->{out}, 0, $n, '');
    }
}

sub queue_out {
    my ($conn, $bytes) = @_;
    $conn->{out} .= $bytes;
    flush($conn);
}

# Commands as hiredis sends them: arrays of bulk strings.
sub take_input {
    my ($self, $conn) = @_;
    while (length $conn->{in} && $CONNS{ $conn->{n} }) {
        my $in = $conn->{in};
        if ($in !~ /^\*(\d+)\r\n/) {
            note($conn, 'not a command: ' . shown(substr($in, 0, 40)));
            drop($conn, 'dropped by the fake');
            return;
        }
        my $count = $1;
        my $pos = length("*$count\r\n");
        my @words;
        for (1 .. $count) {
            my $head = index($in, "\r\n", $pos);
            return if $head < 0;
            my $line = substr($in, $pos, $head - $pos);
            if ($line !~ /^\$(\d+)$/) {
                note($conn, 'not a bulk string: ' . shown($line));
                drop($conn, 'dropped by the fake');
                return;
            }
            my $len = $1;
            return if length($in) < $head + 2 + $len + 2;
            push @words, substr($in, $head + 2, $len);
            $pos = $head + 2 + $len + 2;
        }
        substr($conn->{in}, 0, $pos, '');
        $self->command($conn, \@words);
    }
}

sub bulk { my ($s) = @_; return '$' . length($s) . "\r\n$s\r\n" }

sub push_message {
    my ($channel, $payload) = @_;
    return "*3\r\n" . bulk('message') . bulk($channel) . bulk($payload);
}

sub publish {
    my ($channel, $payload) = @_;
    my @to = sort { $a <=> $b } keys %{ $SUBSCRIBERS{$channel} || {} };
    for my $n (@to) {
        my $c = $CONNS{$n} or next;
        next if $c->{state} ne 'serve';
        note($c, "> message on " . shown($channel) . ': ' . shown($payload));
        queue_out($c, push_message($channel, $payload));
    }
    return scalar @to;
}

# Sentinel mode: the bytes the test left in the push file go to the +switch-master subscribers.
sub take_push {
    my ($self) = @_;
    my $f = "$self->{dir}/push";
    open my $fh, '<', $f or return;
    binmode $fh;
    my $bytes = do { local $/; <$fh> } // '';
    close $fh;
    unlink $f;
    for my $n (sort { $a <=> $b } keys %{ $SUBSCRIBERS{'+switch-master'} || {} }) {
        my $c = $CONNS{$n} or next;
        note($c, '> PUSHED ' . shown(substr($bytes, 0, 100)));
        queue_out($c, $bytes);
    }
}

# Sentinel mode: what the test set as the answer to SENTINEL get-master-addr-by-name; undef for
# silence.
sub master_bytes {
    my ($self) = @_;
    return undef if -e "$self->{dir}/master-silent";
    open my $fh, '<', "$self->{dir}/master-reply" or return "*-1\r\n";
    binmode $fh;
    local $/;
    return <$fh> // '';
}

sub handshake_command {
    my ($words) = @_;
    my $name = uc($words->[0] // '');
    return 1 if $name =~ /^(AUTH|SELECT|CLIENT|HELLO|FUNCTION|INFO|ROLE)$/;
    return 1 if $name eq 'SUBSCRIBE' && grep { /#/ } @$words[1 .. $#$words];
    return 0;
}

sub triggered {
    my ($self, $conn, $words) = @_;
    my $on = $self->{on};
    my $name = uc($words->[0] // '');
    return $conn->{commands} == 1 if $on eq 'first';
    return 1 if $on eq 'every';
    return !handshake_command($words) if $on eq 'steady';
    my $own = grep { /#/ } @$words[1 .. $#$words];
    return $name eq 'SUBSCRIBE' && $own if $on eq 'node SUBSCRIBE';
    return ($name eq 'SUBSCRIBE' || $name eq 'PSUBSCRIBE') && !$own if $on eq 'channel SUBSCRIBE';
    my @want = split ' ', $on;
    return 0 if @want > @$words;
    for my $i (0 .. $#want) { return 0 if lc $want[$i] ne lc $words->[$i] }
    return 1;
}

sub misbehave {
    my ($self, $conn, $words) = @_;
    my $bytes = ref $self->{send} eq 'CODE' ? $self->{send}->($words) : $self->{send};
    note($conn, sprintf '> MISBEHAVED (%d bytes: %s), then %s', length $bytes, shown(substr($bytes, 0, 60)),
         $self->{then});
    queue_out($conn, $bytes) if length $bytes;
    if ($self->{then} eq 'close') {
        $conn->{closing} = 1;
    } elsif ($self->{then} eq 'silence') {
        $conn->{state} = 'silent';
    }
}

sub command {
    my ($self, $conn, $words) = @_;
    $conn->{commands}++;
    note($conn, '< ' . join ' ', map { shown($_) } @$words);
    return if $conn->{state} ne 'serve' || $conn->{closing};
    if ($self->triggered($conn, $words)) {
        $self->reply($conn, $words) if $self->{after_reply};
        $self->misbehave($conn, $words) if $CONNS{ $conn->{n} };
        return;
    }
    $self->reply($conn, $words);
}

# What Redis would answer (as far as the link needs).
sub reply {
    my ($self, $conn, $words) = @_;
    my $name = uc($words->[0] // '');
    my $out;
    if ($name =~ /^(AUTH|SELECT|CLIENT)$/) {
        $out = "+OK\r\n";
    } elsif ($name eq 'PING') {
        $out = "+PONG\r\n";
    } elsif ($name eq 'INFO') {
        $out = bulk("# Cluster\r\ncluster_enabled:0\r\n");
    } elsif ($name eq 'FUNCTION') {
        $out = bulk('sse');
    } elsif ($name =~ /^(P?)(UN)?SUBSCRIBE$/) {
        my $kind = lc $name;
        $out = '';
        for my $ch (@$words[1 .. $#$words]) {
            if ($2) { delete $SUBSCRIBERS{$ch}{ $conn->{n} } } else { $SUBSCRIBERS{$ch}{ $conn->{n} } = 1 }
            my $count = grep { $_->{ $conn->{n} } } values %SUBSCRIBERS;
            $out .= "*3\r\n" . bulk($kind) . bulk($ch) . ":$count\r\n";
        }
    } elsif ($self->{sentinel} && $name eq 'SENTINEL' && lc($words->[1] // '') eq 'get-master-addr-by-name') {
        $out = $self->master_bytes;
        if (!defined $out) {
            note($conn, '(silent: no answer to where the primary is, nor to anything after it)');
            $conn->{state} = 'silent';
            return;
        }
    } elsif ($name eq 'PUBLISH' && @$words == 3) {
        $out = ':' . publish($words->[1], $words->[2]) . "\r\n";
    } elsif ($name eq 'FCALL' && lc($words->[1] // '') eq 'sse_history') {
        my ($key, $private) = @$words[3, 4];
        my @entries = @{ $HISTORY{$key} || [] };
        publish($private, '{"k":' . $JSON->encode($key) . ',"e":[' . join(',', @entries) . ']}');
        $out = ':' . scalar(@entries) . "\r\n";
    } elsif ($name eq 'FCALL' && lc($words->[1] // '') eq 'sse_publish') {
        if (!$self->{hub}) {
            # Replies keep the order of the commands: nothing after it is answered either.
            note($conn, '(held: a fake never acknowledges an event; silent from here)');
            $conn->{state} = 'silent';
            return;
        }
        my $nkeys = $words->[2];
        my @keys = @$words[3 .. 2 + $nkeys];
        my ($data, $event, $limit, $ttl, $id, $origin) = @$words[3 + $nkeys .. 8 + $nkeys];
        my %entry = (i => $id, o => $origin // '', t => int(time * 1000), l => '0', e => $event // '', d => $data);
        $entry{c} = \@keys if @keys > 1;
        my $text = $JSON->encode(\%entry);
        for my $key (@keys) {
            my $h = $HISTORY{$key} //= [];
            push @$h, $text;
            shift @$h while @$h > ($limit // 100);
            publish($key, $text);
        }
        $out = bulk($id);
    } else {
        $out = "-ERR the fake does not know '" . shown($name) . "'\r\n";
    }
    note($conn, '> ' . shown(substr($out, 0, 100)));
    queue_out($conn, $out);
}

1;
